"""PNG plots of a run or a sweep (matplotlib, no display needed)."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_curves(history: list, path: str, title: str = "", metric: str | None = None) -> str:
    """The test metric (when the task has a test set) and the pruned fraction per epoch of one run."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [h["epoch"] for h in history]
    if metric and all(metric in h for h in history):
        ax[0].plot(ep, [h[metric] for h in history], marker="o")
        ax[0].set(ylabel=metric.replace("_", " "))
    else:
        ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
        ax[0].set(ylabel="train loss")
    ax[0].set(xlabel="epoch", title=title)
    ax[1].plot(ep, [h["pruned_fraction"] for h in history], marker="o", label="this epoch")
    ax[1].plot(ep, [h["cum_pruned_fraction"] for h in history], marker=".", label="cumulative")
    ax[1].set(xlabel="epoch", ylabel="pruned fraction")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
