"""EpochClock: where one epoch's time goes on a rank (waiting for data, the steps, observing, and the
boundary after it: deciding, evaluating, reporting). Runs in every Train worker."""

from __future__ import annotations

import time


class EpochClock:
    """`timed(batches)` counts the waits for batches; `lap(what)` adds the time since the last batch
    arrived or the last lap to `spent[what]`; `mark(name)` notes a moment of the boundary.
    `prev_end`: when the previous epoch's last step ended on this rank (None before the first)."""

    def __init__(self, prev_end: float | None = None):
        self.start = self._t = time.perf_counter()
        self.prev_end = prev_end
        self.spent = {"data_wait": 0.0, "compute": 0.0, "observe": 0.0}
        self.marks: dict[str, float] = {}
        self.first_step: float | None = None
        self.first_batch_s: float | None = None

    def timed(self, batches):
        it = iter(batches)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            self._t = time.perf_counter()
            self.spent["data_wait"] += self._t - t
            if batch is None:
                return
            if self.first_step is None:
                self.first_step, self.first_batch_s = self._t, self._t - t
            yield batch

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        self.spent[what] += now - self._t
        self._t = now

    def mark(self, name: str) -> float:
        self.marks[name] = t = time.perf_counter()
        return t

    @property
    def stall(self) -> float:
        """From the previous epoch's last step to this one's first (-1: not known on this rank)."""
        return self.first_step - self.prev_end if self.first_step is not None and self.prev_end is not None else -1.0

    def times(self) -> dict:
        """The epoch's own timings (seconds), once it was trained."""
        m = self.marks
        return {"epoch_time_s": time.perf_counter() - self.start, "train_time_s": m["trained"] - self.start,
                "data_wait_s": self.spent["data_wait"], "compute_s": self.spent["compute"],
                "observe_s": self.spent["observe"]}

    def boundary(self) -> dict:
        """Where the boundary after this epoch went, reported with the next epoch (with its first batch)."""
        m = self.marks
        return {"decision_s": m["decided"] - m["trained"], "eval_s": m["evaluated"] - m["decided"],
                "report_s": time.perf_counter() - m["reported"]}
