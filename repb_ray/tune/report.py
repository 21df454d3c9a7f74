"""Sweep reports: the trial table, the Pareto front, and the paper's views (a method x budget table
of mean +- sd test metric with the drop from full data, the metric against the pruned fraction).
Pure Python apart from the plots."""

from __future__ import annotations

import math
from collections import defaultdict

COLUMNS = ("trial", "method", "budget", "seed", "status", "epochs", "metric", "pruned_fraction", "wall_time_s")
NAMES = {"repb": "RePB", "infobatch": "InfoBatch", "random": "Random*", "full": "Full data",
         "egreedy": "ε-greedy", "ucb": "UCB"}
SHOWN = {"repb": ("window", "rho", "lwp", "resample", "ctr", "ctr_max"), "infobatch": ("anneal", "delta", "prune_ratio"),
         "egreedy": ("epsilon", "select_every"), "ucb": ("ucb_c", "select_every"), "random": ("prune_ratio",)}
KNOB = {"repb": "rho", "infobatch": "prune_ratio", "random": "prune_ratio", "egreedy": "prune_ratio", "ucb": "prune_ratio"}


def label_trials(trials: list[dict]) -> list[tuple[str, object]]:
    """(method, budget) of each trial's overrides: the method is the policy and whichever of its
    parameters vary across the sweep's trials of that policy (InfoBatch without annealing is
    InfoBatch*); the budget is target_pruned when set, else the policy's pruning knob."""
    varying: dict = defaultdict(set)
    by_policy = defaultdict(list)
    for t in trials:
        by_policy[t.get("policy", "repb")].append(t)
    for policy, ts in by_policy.items():
        budgeted = any("target_pruned" in t for t in ts)
        for key in SHOWN.get(policy, ()):
            if key == KNOB.get(policy) and not budgeted:
                continue
            if len({repr(t.get(key)) for t in ts}) > 1:
                varying[policy].add(key)
    out = []
    for t in trials:
        policy = t.get("policy", "repb")
        name = NAMES.get(policy, policy)
        extras = []
        for key in sorted(varying[policy]):
            if policy == "infobatch" and key == "anneal":
                name = "InfoBatch*" if t.get("anneal") is False else "InfoBatch"
            elif key == "window":
                extras.append(f"W={t.get('window', 1)}")
            else:
                extras.append(f"{key}={t.get(key)}")
        method = name + (f" ({', '.join(extras)})" if extras else "")
        if policy == "full":
            budget = 0.0
        elif "target_pruned" in t:
            budget = t["target_pruned"]
        else:
            budget = t.get(KNOB.get(policy, ""), None)
        out.append((method, budget))
    return out


def pareto_front(rows: list[dict], mode: str = "max") -> list[int]:
    """Indices of rows not dominated in (metric, pruned_fraction): pruned maximised, the metric per mode."""
    sign = 1.0 if mode == "max" else -1.0
    pts = [(None if r["metric"] is None else sign * r["metric"], r["pruned_fraction"]) for r in rows]
    front = []
    for i, (a, p) in enumerate(pts):
        if a is None or p is None:
            continue
        dominated = any(b is not None and q is not None and b >= a and q >= p and (b > a or q > p)
                        for j, (b, q) in enumerate(pts) if j != i)
        if not dominated:
            front.append(i)
    return front


def format_table(rows: list[dict], front: list[int]) -> str:
    def cell(v):
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    table = [list(COLUMNS) + ["pareto"]] + [[cell(r.get(c)) for c in COLUMNS] + ["*" if i in front else ""]
                                            for i, r in enumerate(rows)]
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def aggregate(rows: list[dict]) -> dict:
    """Per (method, budget): mean and sd of the metric and the pruned fraction over finished trials,
    whether the budget was reached (within 1 point), and the full-data mean."""
    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "FINISHED" and r["metric"] is not None:
            groups[(r["method"], r["budget"])].append(r)
    cells = {}
    for (method, budget), rs in groups.items():
        m, sd = _mean_sd([r["metric"] for r in rs])
        pm, psd = _mean_sd([r["pruned_fraction"] for r in rs])
        reached = None
        if any(r.get("target_pruned") is not None for r in rs):
            reached = all(abs(r["pruned_fraction"] - r["target_pruned"]) <= 0.01 for r in rs)
        cells[(method, budget)] = {"mean": m, "sd": sd, "n": len(rs), "pruned_mean": pm, "pruned_sd": psd,
                                   "reached": reached}
    full = [v["mean"] for (method, _), v in cells.items() if method == NAMES["full"]]
    return {"cells": cells, "full": full[0] if full else None}


def paper_table(agg: dict, metric: str, mode: str) -> str:
    """Markdown: methods x budgets, mean +- sd over seeds, and the change from full data; '\\' where
    the budget was not reached (as the paper marks unattainable rates)."""
    cells, full = agg["cells"], agg["full"]
    budgets = sorted({b for (_, b) in cells if b not in (None, 0.0)}, key=float)
    methods = sorted({m for (m, _) in cells}, key=lambda m: (m != NAMES["full"], m))
    scale = 100.0 if metric.endswith("accuracy") else 1.0
    head = ["method"] + [f"{b:.0%} pruned" if isinstance(b, float) else str(b) for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        if m == NAMES["full"]:
            c = cells[(m, 0.0)]
            row += [f"{c['mean'] * scale:.2f} ± {c['sd'] * scale:.2f}"] + [""] * (len(budgets) - 1)
        else:
            for b in budgets:
                c = cells.get((m, b))
                if c is None:
                    row.append("")
                    continue
                text = f"{c['mean'] * scale:.2f} ± {c['sd'] * scale:.2f}"
                if full is not None:
                    delta = (c["mean"] - full) * scale
                    worse = delta < 0 if mode == "max" else delta > 0
                    text += f" ({'↓' if worse else '↑'}{abs(delta):.2f})"
                if c["reached"] is False:
                    text = f"\\ ({c['pruned_mean']:.0%} reached) {text}"
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    unit = " (%)" if scale == 100.0 else ""
    return f"test {metric}{unit}, mean ± sd over seeds; (↓x) = change from full data\n\n" + "\n".join(lines)


def plot_metric_vs_pruned(agg: dict, metric: str, path: str, title: str = "") -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    by_method = defaultdict(list)
    for (m, b), c in agg["cells"].items():
        if m != NAMES["full"]:
            by_method[m].append(c)
    for m, cs in sorted(by_method.items()):
        cs = sorted(cs, key=lambda c: c["pruned_mean"])
        ax.errorbar([c["pruned_mean"] * 100 for c in cs], [c["mean"] for c in cs], yerr=[c["sd"] for c in cs],
                    marker="o", capsize=3, label=m)
    if agg["full"] is not None:
        ax.axhline(agg["full"], color="gray", ls="--", label="full data")
    ax.set(xlabel="pruned (% of sample-steps saved)", ylabel=f"test {metric}", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(rows: list[dict], front: list[int], path: str, metric: str = "metric") -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = [(i, r) for i, r in enumerate(rows) if r["metric"] is not None and r["pruned_fraction"] is not None]
    ax.scatter([r["pruned_fraction"] for _, r in pts], [r["metric"] for _, r in pts], c="tab:blue", label="trials")
    for i, r in pts:
        ax.annotate(r["trial"], (r["pruned_fraction"], r["metric"]), fontsize=6)
    f = sorted((rows[i] for i in front), key=lambda r: r["pruned_fraction"])
    ax.plot([r["pruned_fraction"] for r in f], [r["metric"] for r in f], "r-o", label="Pareto front")
    ax.set(xlabel="pruned fraction (sample-steps saved)", ylabel=f"final test {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pruned_per_epoch(per_epoch: dict[str, list[float]], path: str) -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, series in per_epoch.items():
        ax.plot(range(1, len(series) + 1), series, marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="pruned fraction of the epoch")
    ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
