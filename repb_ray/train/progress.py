"""ProgressBoard: where rank 0 posts where the epoch is and each epoch's metrics, and where the driver's
console and tracking read them; a small actor of its own, apart from the coordinator (its calls never
wait behind a decision). Created by the driver; runs in a Ray actor (num_cpus=0)."""

from __future__ import annotations

import uuid


class ProgressBoard:
    """The last progress of the current epoch and every epoch's metrics, numbered as they came."""

    def __init__(self):
        self.incarnation = uuid.uuid4().hex  # a board restarted empty is another one: readers start over
        self._now: dict = {}
        self._epochs: list = []   # (seq, metrics) of the epochs reported so far, in epoch order
        self._notes: list = []    # (seq, text): resumes and resizes, for the console
        self._seq = 0

    def post(self, progress: dict) -> None:
        """Rank 0: where the epoch is (epoch, samples, kept, start) or an epoch's metrics (`done`; an epoch
        evaluated asynchronously comes twice, the second time with its test metrics), or a `note`. A report
        of epoch E replaces those of E and later (a resumed run trains them again)."""
        if "note" in progress:
            self._seq += 1
            self._notes.append((self._seq, progress["note"]))
        elif "done" in progress:
            done = progress["done"]
            self._seq += 1
            self._epochs = [(s, m) for s, m in self._epochs if m["epoch"] < done["epoch"]] + [(self._seq, done)]
        else:
            self._now = progress

    def read(self, since: int = 0) -> dict:
        """The epoch reports and notes numbered after `since`, as (number, metrics or text), and where the
        current epoch is."""
        return {"board": self.incarnation, "epochs": [(s, m) for s, m in self._epochs if s > since],
                "notes": [(s, t) for s, t in self._notes if s > since], "now": self._now}


def create():
    """The board's actor: no CPU, on the driver's node when it has room (placement.py), restarted empty if
    its process dies (a new incarnation: the console reads it from the start)."""
    import ray

    from repb_ray.train.placement import near_here
    return ray.remote(ProgressBoard).options(num_cpus=0, max_restarts=-1, max_task_retries=0,
                                             scheduling_strategy=near_here()).remote()
