"""Sweep report: the results table, the accuracy-vs-pruned Pareto front and its plots; pure Python."""

from __future__ import annotations

COLUMNS = ("trial", "policy", "rho", "window", "status", "epochs", "final_accuracy", "pruned_fraction", "wall_time_s")


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of rows not dominated in (final_accuracy, pruned_fraction), both maximised."""
    pts = [(r["final_accuracy"], r["pruned_fraction"]) for r in rows]
    front = []
    for i, (a, p) in enumerate(pts):
        if a is None:
            continue
        dominated = any(b is not None and b >= a and q >= p and (b > a or q > p) for j, (b, q) in enumerate(pts) if j != i)
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


def plot_pareto(rows: list[dict], front: list[int], path: str) -> str:
    from repb_ray.plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = [(i, r) for i, r in enumerate(rows) if r["final_accuracy"] is not None]
    ax.scatter([r["pruned_fraction"] for _, r in pts], [r["final_accuracy"] for _, r in pts], c="tab:blue",
               label="trials")
    for i, r in pts:
        ax.annotate(r["trial"], (r["pruned_fraction"], r["final_accuracy"]), fontsize=7)
    f = sorted((rows[i] for i in front), key=lambda r: r["pruned_fraction"])
    ax.plot([r["pruned_fraction"] for r in f], [r["final_accuracy"] for r in f], "r-o", label="Pareto front")
    for r in rows:
        if r.get("policy") == "full" and r["final_accuracy"] is not None:
            ax.axhline(r["final_accuracy"], color="gray", ls="--", label="full data")
            break
    ax.set(xlabel="pruned fraction (sample-steps saved)", ylabel="final test accuracy")
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
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
