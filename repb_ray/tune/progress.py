"""The sweep's console: one plain line per ended trial (what it was, its result, the time left at this
pace), Tune's own table off. Runs in the sweep's driver (a Tune callback, pickled with the sweep's
state: it holds no path and no credential)."""

from __future__ import annotations

import time

from ray import tune

TERMINAL = ("TERMINATED", "ERROR")


def progress_line(done: int, total: int, elapsed_s: float, what: str, status: str, metric: str,
                  value, pruned, ended_here: int | None = None) -> str:
    """One plain line per ended trial: count, what it was, its result, and the time left at this pace
    (the pace of the `ended_here` trials this invocation ended in `elapsed_s`; all `done` by default)."""
    ended_here = done if ended_here is None else ended_here
    left = (total - done) * elapsed_s / ended_here if ended_here else float("nan")
    result = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {metric}"
    if isinstance(pruned, (int, float)):
        result += f", {100 * pruned:.1f}% pruned"
    return (f"trial {done}/{total} {status.lower()}: {what}: {result} "
            f"({elapsed_s / 60:.1f} min so far, about {left / 60:.0f} min left)")


class Progress(tune.Callback):
    """Prints progress_line as each trial ends; counts ended trials from Tune's list, so a resumed
    sweep goes on counting where it stopped."""

    def __init__(self, sweep: str, names: list[str], metric: str, total: int):
        self.sweep, self.names, self.metric, self.total = sweep, names, metric, total
        self.t0 = time.perf_counter()
        self.ended: set = set()

    def setup(self, **info):
        self.t0 = time.perf_counter()  # a resumed sweep counts its pace from its own start and its own trials
        self.ended = set()

    def _ended(self, trials, trial, status: str) -> None:
        self.ended.add(trial.trial_id)
        done = len(self.ended | {t.trial_id for t in trials if t.status in TERMINAL})
        index = (trial.config or {}).get("index")
        what = self.names[index] if index is not None and index < len(self.names) else trial.trial_id
        r = trial.last_result or {}
        line = progress_line(done, self.total, time.perf_counter() - self.t0, what, status, self.metric,
                             r.get(self.metric), r.get("cum_pruned_fraction"), ended_here=len(self.ended))
        print(f"[repb_ray] sweep {self.sweep}: {line}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):  # Tune passes these by keyword
        self._ended(trials, trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "FAILED")
