"""Sweep reports: the trial table, the Pareto front, and the paper's views: a method x budget table of
the test metric (mean and 95% interval over seeds, the change from full data), a table of each
method's paired difference from a reference method (interval, p-value, * where the interval
excludes 0), the metric against the pruned fraction, and the knob each policy used per epoch.
Pure Python apart from the plots (matplotlib) and `build_report` (reads the trials' summaries)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

from repb_ray import storage
from repb_ray.layout import RECORD_FILE, SUMMARY_FILE
from repb_ray.tune.stats import detectable, estimate, holm, paired

COLUMNS = ("trial", "method", "budget", "seed", "status", "epochs", "metric", "pruned_fraction", "wall_time_s")
FULL = "Full data"


def label_trials(configs: list, seed_keys: list | tuple = ()) -> list[tuple[str, object]]:
    """(method, budget) of each trial's config. The method is the policy's label with whichever of its
    LABEL_PARAMS vary across the sweep's trials of that policy, and any other config key that varies
    among them (`ctr_normalize=True`: arms that differ in anything but the seed and the budget are rows
    of their own; the sweep's seed_keys follow the seed, so they pair, not split); the budget is
    target_pruned, 0 for full data, None for a fixed knob (its label then names the knob: RePB
    (rho=0.5)), placed in the report at the fraction it reached."""
    from repb_ray.core.registry import policy_class
    params = [c.policy_params() for c in configs]
    varying: dict = {}
    for policy in {c.policy for c in configs}:
        cls = policy_class(policy)
        mine = [(c, p) for c, p in zip(configs, params) if c.policy == policy]
        fixed = [p for c, p in mine if c.target_pruned is None]
        budgeted = len(fixed) < len(mine)
        keys = {k for k in cls.LABEL_PARAMS if k != cls.KNOB and len({repr(p.get(k)) for _, p in mine}) > 1}
        knob = cls.KNOB is not None and cls.BUDGET and fixed and (budgeted or len({repr(p.get(cls.KNOB)) for p in fixed}) > 1)
        flat = [_arm_keys(c, seed_keys) for c, _ in mine]
        others = tuple(sorted(k for k in set().union(*flat) if len({repr(f.get(k)) for f in flat}) > 1))
        varying[policy] = (tuple(sorted(keys)), bool(knob), others)
    out = []
    for c, p in zip(configs, params):
        cls = policy_class(c.policy)
        keys, knob, others = varying[c.policy]
        if not cls.BUDGET:
            budget = 0.0
        elif c.target_pruned is not None:
            budget = c.target_pruned
        else:
            budget = None
            if knob:
                keys = tuple(sorted(keys + (cls.KNOB,)))
        label = cls.label(p, keys)
        if others:
            arm = _arm_keys(c, seed_keys)
            extra = ", ".join(f"{k}={arm.get(k)}" for k in others)
            label = label[:-1] + f", {extra})" if label.endswith(")") else f"{label} ({extra})"
        out.append((label, budget))
    return out


# what never tells arms apart: where a run goes, how it is tracked, its seed (the pairing) and its budget (the column)
_NOT_AN_ARM = {"name", "output_dir", "storage_path", "tracking_uri", "experiment", "tags", "seed", "target_pruned",
               "policy", "policy_args", "fail_at", "audit", "max_failures", "system_metrics", "coordinator_timeout_s",
               "checkpoint_every_steps", "preemption_check_steps", "eval_mode"}


def _arm_keys(cfg, seed_keys: list | tuple = ()) -> dict:
    """A trial's config keys that define its arm, flat (task_args.x), but for the keys that follow the seed."""
    out = {}
    for k, v in cfg.to_dict().items():
        if k in _NOT_AN_ARM:
            continue
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": repr(vv) for kk, vv in v.items()})
        else:
            out[k] = v if not isinstance(v, (list, tuple)) else repr(v)
    return {k: v for k, v in out.items() if k not in seed_keys}


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


def aggregate(rows: list[dict]) -> dict:
    """Per (method, budget): the metric and the pruned fraction over finished trials (Estimates), the
    metric by seed (for pairing), whether a budget was reached (within 1 point), and full data's cell."""
    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "FINISHED" and r["metric"] is not None:
            groups[(r["method"], r["budget"])].append(r)
    cells = {}
    for (method, budget), rs in groups.items():
        reached = None
        if any(r.get("target_pruned") is not None for r in rs):
            # within 1 point, and without the knob at its cap (budget.KNOB_CAP) in any epoch
            reached = all(abs(r["pruned_fraction"] - r["target_pruned"]) <= 0.01 and not r.get("knob_capped")
                          for r in rs)
        cells[(method, budget)] = {"metric": estimate([r["metric"] for r in rs]),
                                   "pruned": estimate([r["pruned_fraction"] for r in rs]),
                                   "by_seed": {r["seed"]: r["metric"] for r in rs}, "reached": reached}
    full = next((c for (m, _), c in cells.items() if m == FULL), None)
    return {"cells": cells, "full": full}


def resolve_reference(methods, reference: str) -> str | None:
    """The method the report compares with: `reference` itself, or the one method named like it."""
    methods = set(methods)
    if reference in methods:
        return reference
    close = [m for m in methods if m.split(" (")[0] == reference]
    return close[0] if len(close) == 1 else None


def compare(agg: dict, reference: str) -> dict:
    """(method, budget) -> Paired (method minus reference, over the seeds both ran at that budget),
    with `p_holm`, Holm's adjustment over all of the table's comparisons."""
    cells = agg["cells"]
    ref = resolve_reference((m for m, _ in cells), reference)
    out: dict = {}
    if ref is None:
        return out
    for (method, budget), c in cells.items():
        if method in (ref, FULL) or budget is None:
            continue
        base = cells.get((ref, budget))
        if base is None:
            continue
        result = paired(c["by_seed"], base["by_seed"])
        if result is not None:
            out[(method, budget)] = result
    # Holm's family counts each distinct comparison once: a method whose runs at two budgets are the same
    # runs' results (InfoBatch stopping at its reachable fraction under both) is one test, not two
    family: dict = {}
    for method, budget in out:
        same = (method, tuple(sorted(cells[(method, budget)]["by_seed"].items())),
                tuple(sorted(cells[(ref, budget)]["by_seed"].items())))
        family.setdefault(same, []).append((method, budget))
    groups = list(family.values())
    for group, p in zip(groups, holm([out[g[0]].p for g in groups])):
        for k in group:
            out[k] = (out[k], p)
    return {"reference": ref, "pairs": out}


def _ci(e, scale: float) -> str:
    if e.lo is None:
        return f"{e.mean * scale:.2f}"
    return f"{e.mean * scale:.2f} [{e.lo * scale:.2f}, {e.hi * scale:.2f}]"


def _columns(cells: dict) -> list:
    return sorted({b for (_, b) in cells if b not in (None, 0.0)}, key=float)


def _nearest(budgets: list, fraction: float):
    return min(budgets, key=lambda b: abs(b - fraction)) if budgets else "reached"


def paper_table(agg: dict, metric: str, mode: str) -> str:
    """Markdown: methods x budgets, the mean and 95% interval over seeds and the change from full data;
    '\\' where the budget was not reached or the knob hit its cap (as the paper marks unattainable rates); a fixed-knob arm
    sits in the column nearest the fraction it reached, with that fraction."""
    cells, full = agg["cells"], agg["full"]
    budgets = _columns(cells)
    cols = budgets or ["reached"]
    methods = sorted({m for (m, _) in cells}, key=lambda m: (m != FULL, m))
    scale = 100.0 if metric.endswith("accuracy") else 1.0
    head = ["method"] + [f"{b:.0%} pruned" if isinstance(b, float) else "pruned (reached)" for b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = {b: "" for b in cols}
        for (method, b), c in cells.items():
            if method != m:
                continue
            text = _ci(c["metric"], scale)
            if m == FULL:
                row[cols[0]] = text
                continue
            if full is not None:
                delta = (c["metric"].mean - full["metric"].mean) * scale
                worse = delta < 0 if mode == "max" else delta > 0
                text += f" ({'↓' if worse else '↑'}{abs(delta):.2f})"
            if b is None:
                text += f" @{c['pruned'].mean:.0%}"
                b = _nearest(budgets, c["pruned"].mean)
            elif c["reached"] is False:
                text = f"\\ ({c['pruned'].mean:.0%} reached) {text}"
            row[b] = (row[b] + "; " + text) if row[b] else text
        lines.append("| " + " | ".join([m] + [row[b] for b in cols]) + " |")
    unit = " (%)" if scale == 100.0 else ""
    seeds = sorted({c["metric"].n for c in cells.values()})
    return (f"test {metric}{unit}: mean [95% interval] over {'/'.join(map(str, seeds))} seed(s); (↓x) = change from "
            "full data; @x% = the fraction a fixed-knob arm reached\n\n" + "\n".join(lines))


def difference_table(agg: dict, comparison: dict, metric: str) -> str:
    """Markdown: each method's paired difference from the reference at each budget: mean [95% interval]
    over the shared seeds, * where the interval excludes 0, † where Holm's adjusted p < 0.05; p (two-sided
    paired t, Holm-adjusted); an unresolved difference says so with the difference these seeds could
    detect; `\\` where the method did not reach the budget (the cells then compare unequal budgets)."""
    if not comparison.get("pairs"):
        return ""
    ref, pairs = comparison["reference"], comparison["pairs"]
    budgets = sorted({b for _, b in pairs}, key=float)
    methods = sorted({m for m, _ in pairs})
    scale = 100.0 if metric.endswith("accuracy") else 1.0
    head = ["method"] + [f"{b:.0%} pruned" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        for b in budgets:
            if (m, b) not in pairs:
                row.append("")
                continue
            pr, p_holm = pairs[(m, b)]
            star = ("*" if pr.significant else "") + ("†" if p_holm < 0.05 else "")
            text = f"{_ci(pr.diff, scale)}{star} (p={pr.p:.3f}, Holm {p_holm:.3f})"
            if not pr.significant:
                d = detectable(pr.diff)
                text += f"; not resolved at {pr.diff.n} seeds" + (f" (detectable ≈ {d * scale:.2f})" if d else "")
            if agg["cells"].get((m, b), {}).get("reached") is False:
                text = "\\ " + text
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    unit = " points" if scale == 100.0 else ""
    return (f"difference from {ref} in test {metric}{unit}, paired by seed: mean [95% interval]; * = the interval "
            "excludes 0; † = Holm-adjusted p < 0.05; p = two-sided paired t, then Holm-adjusted over this table's "
            "distinct comparisons; detectable = the difference these seeds find 80% of the time; \\ = the budget "
            "was not reached\n\n" + "\n".join(lines))


@dataclass
class Report:
    rows: list[dict]
    agg: dict
    comparison: dict
    metric: str
    mode: str
    front: list = field(default_factory=list)

    @property
    def text(self) -> str:
        parts = [format_table(self.rows, self.front), paper_table(self.agg, self.metric.replace("test_", ""), self.mode)]
        diff = difference_table(self.agg, self.comparison, self.metric.replace("test_", ""))
        return "\n\n".join(parts + ([diff] if diff else []))

    def summary(self, **extra) -> dict:
        cells = [{"method": m, "budget": b, "metric": c["metric"].as_dict(), "pruned": c["pruned"].as_dict(),
                  "reached": c["reached"], "by_seed": {str(s): v for s, v in sorted(c["by_seed"].items())}}
                 for (m, b), c in sorted(self.agg["cells"].items(), key=str)]
        pairs = [{"method": m, "budget": b, "reference": self.comparison["reference"], **pr.as_dict(), "p_holm": ph}
                 for (m, b), (pr, ph) in sorted(self.comparison.get("pairs", {}).items(), key=str)]
        full = self.agg["full"]
        timed = [r for r in self.rows if r.get("train_share") is not None]
        share = (sum(r["train_time_s"] for r in timed) / sum(r["wall_time_s"] for r in timed)) if timed else None
        spent = [r["time_s"] for r in timed if r.get("time_s")]
        phases = {k: sum(t[k] for t in spent) / len(spent) for k in spent[0]} if spent else None
        return {**extra, "metric": self.metric, "mode": self.mode, "trials": self.rows,
                "train_share": share,  # the trials' training time over their wall time (start-up, boundaries, teardown)
                "time_s": phases,  # where a trial's wall time went, mean over the trials (summary.json's time_s)
                "code_versions": code_versions(self.rows),  # source digest -> its trials (one, unless the code changed)
                "pareto_front": [self.rows[i]["trial"] for i in self.front], "table": cells,
                "comparisons": pairs, "full_data": full["metric"].as_dict() if full else None}

    def write(self, out: str, summary: dict, title: str) -> list[str]:
        """The report's files in `out`; returns their names."""
        from repb_ray import storage
        metric = self.metric.replace("test_", "")
        files = {"sweep_summary.json": json.dumps(summary, indent=2, default=str) + "\n",
                 "sweep_table.txt": format_table(self.rows, self.front) + "\n",
                 "paper_table.md": paper_table(self.agg, metric, self.mode) + "\n\n"
                                   + difference_table(self.agg, self.comparison, metric) + "\n"}
        for name, text in files.items():
            storage.write_bytes(os.path.join(out, name), text.encode())
        plots = [plot_pareto(self.rows, self.front, os.path.join(out, "pareto.png"), metric),
                 plot_pruned_per_epoch(self.rows, os.path.join(out, "pruned_per_epoch.png")),
                 plot_metric_vs_pruned(self.agg, metric, os.path.join(out, "metric_vs_pruned.png"), title),
                 plot_knobs(self.rows, os.path.join(out, "knobs.png"))]
        return list(files) + [os.path.basename(p) for p in plots if p]


def trial_rows(configs: list, labels: list, names: list[str], statuses: dict, results: dict,
               trials_dir: str, metric: str, trials_home: str | None = None) -> list[dict]:
    """A row per trial: from its own summary.json when it finished (or was stopped after writing it),
    else from Tune's last result for it."""
    from repb_ray.core.registry import policy_class
    rows = []
    for i, (cfg, (method, budget), name) in enumerate(zip(configs, labels, names)):
        summary = _read(os.path.join(trials_dir, name, SUMMARY_FILE))
        record = _read_stored(storage.join(trials_home, name, RECORD_FILE)) if trials_home else {}
        record = {"mlflow_run_id": (summary or {}).get("mlflow_run_id"), **(record or {})}
        last = results.get(i) or {}
        status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(statuses.get(i), statuses.get(i) or "MISSING")
        cls = policy_class(cfg.policy)
        row = {"trial": name, "index": i, "method": method, "budget": budget, "seed": cfg.seed, "policy": cfg.policy,
               "target_pruned": cfg.target_pruned, "knob": cls.KNOB, "status": status,
               "mlflow_run_id": record.get("mlflow_run_id"), "error": None}
        if summary is not None:
            epochs = summary["epochs"]
            train_s = sum(e.get("train_time_s") or 0.0 for e in summary["per_epoch"])
            wall = summary.get("wall_time_s")
            row.update(epochs=epochs, metric=summary.get("final_metric"), pruned_fraction=summary["pruned_fraction"],
                       wall_time_s=wall, train_time_s=train_s, train_share=train_s / wall if wall else None,
                       knob_capped=bool(summary.get("knob_capped_epochs")), time_s=summary.get("time_s"),
                       code=(summary.get("code") or {}).get("source_digest"),
                       per_epoch=[{k: e.get(k) for k in ("epoch", "pruned_fraction", *cls.DECISIONS) if k in e}
                                  for e in summary["per_epoch"]])
            if status == "FINISHED" and epochs < cfg.epochs:
                row["status"] = "STOPPED"
        else:
            epochs = int(last.get("epoch", 0))
            row.update(epochs=epochs, metric=last.get(metric), pruned_fraction=last.get("cum_pruned_fraction"),
                       wall_time_s=last.get("time_total_s"), per_epoch=[])
            if status == "FINISHED":
                row["status"] = "STOPPED" if epochs < cfg.epochs else "FINISHED"
        rows.append(row)
    return rows


def code_versions(rows: list[dict]) -> dict[str, list[str]]:
    """The source digests the trials ran (from their summaries) -> the trials that ran each; more than one
    means the sweep's results mix code versions (its code changed while it ran, or between its invocations)."""
    out: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.get("code"):
            out[r["code"]].append(r["trial"])
    return dict(out)


def mixed_code(versions: dict[str, list[str]]) -> str | None:
    """The sweep's warning when its trials ran more than one version of the code (None when they did not)."""
    if len(versions) < 2:
        return None
    counts = ", ".join(f"{d} ({len(t)} trial{'s' if len(t) > 1 else ''})" for d, t in sorted(versions.items(), key=lambda kv: -len(kv[1])))
    return (f"warning: the trials ran {len(versions)} versions of repb_ray's code (source digests {counts}): the code "
            "changed while the sweep ran, so its cells mix versions; sweep_summary.json's code_versions lists each "
            "version's trials")


def _read(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_stored(location: str) -> dict | None:
    """A trial's record in its home (a path or URI), None when it has none."""
    try:
        return storage.read_json(location) if storage.exists(location) else None
    except (OSError, ValueError):
        return None


def build_report(spec, configs: list, labels: list, names: list[str], grid, metric: str, mode: str,
                 trials_dir: str, trials_home: str | None = None) -> Report:
    from repb_ray import _ray_compat
    statuses, results = _ray_compat.tune_trials(grid)
    rows = trial_rows(configs, labels, names, statuses, results, trials_dir, metric, trials_home)
    agg = aggregate(rows)
    return Report(rows, agg, compare(agg, spec.reference), metric, mode, pareto_front(rows, mode))


# -- plots -------------------------------------------------------------------------------------------

def plot_metric_vs_pruned(agg: dict, metric: str, path: str, title: str = "") -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    by_method = defaultdict(list)
    for (m, _), c in agg["cells"].items():
        if m != FULL:
            by_method[m].append(c)
    for m, cs in sorted(by_method.items()):
        cs = sorted(cs, key=lambda c: c["pruned"].mean)
        ax.errorbar([c["pruned"].mean * 100 for c in cs], [c["metric"].mean for c in cs],
                    yerr=[c["metric"].half_width or 0.0 for c in cs], marker="o", capsize=3, label=m)
    if agg["full"] is not None:
        f = agg["full"]["metric"]
        ax.axhline(f.mean, color="gray", ls="--", label="full data")
        if f.lo is not None:
            ax.axhspan(f.lo, f.hi, color="gray", alpha=0.15)
    ax.set(xlabel="pruned (% of sample-steps saved)", ylabel=f"test {metric} (95% interval)", title=title)
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
    for _, r in pts:
        ax.annotate(r["trial"], (r["pruned_fraction"], r["metric"]), fontsize=6)
    f = sorted((rows[i] for i in front), key=lambda r: r["pruned_fraction"])
    ax.plot([r["pruned_fraction"] for r in f], [r["metric"] for r in f], "r-o", label="Pareto front")
    ax.set(xlabel="pruned fraction (sample-steps saved)", ylabel=f"final test {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _series(rows: list[dict], key: str) -> dict:
    """(method, budget) -> (epochs, the mean of `key` over the cell's trials at each epoch that has it)."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for e in r.get("per_epoch") or []:
            v = e.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                acc[(r["method"], r["budget"])][e["epoch"]].append(v)
    return {k: (sorted(by), [sum(by[e]) / len(by[e]) for e in sorted(by)]) for k, by in acc.items()}


def plot_pruned_per_epoch(rows: list[dict], path: str) -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (m, b), (epochs, series) in sorted(_series(rows, "pruned_fraction").items(), key=str):
        ax.plot(epochs, series, marker=".", label=f"{m} {b if b is not None else ''}".strip())
    ax.set(xlabel="epoch", ylabel="pruned fraction of the epoch (mean over seeds)")
    ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_knobs(rows: list[dict], path: str) -> str | None:
    """Per method, the knob its policy set before each epoch (rho, r, subset size), one line per budget."""
    knobs = {}
    for r in rows:
        for key in ("rho", "r", "size"):
            if any(key in e for e in r.get("per_epoch") or []):
                knobs.setdefault(r["method"], key)
                break
    if not knobs:
        return None
    from repb_ray.plots import pyplot
    plt = pyplot()
    methods = sorted(knobs)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods):
        key = knobs[m]
        for (_, b), (epochs, series) in sorted(_series([r for r in rows if r["method"] == m], key).items(), key=str):
            ax.plot(epochs, series, marker=".", label=f"{b:.0%}" if isinstance(b, float) else "fixed")
        ax.set(title=m, xlabel="epoch", ylabel=f"{key} that chose the epoch's plan")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
