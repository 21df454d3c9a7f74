"""ObservationSender: a rank's observations of one epoch, buffered per step, sent every `every` steps
as one Observations message per shard (numbered, without waiting), then closed with an EpochDone
per shard naming how many it must have received. Runs in every Train worker."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ray

from repb_ray.train.messages import EpochDone, Observations, Routing


class ObservationSender:
    def __init__(self, routing: Routing, epoch: int, rank: int, every: int,
                 score_error: Callable[[np.ndarray, np.ndarray, int], Exception]):
        self.routing, self.epoch, self.rank, self.every = routing, epoch, rank, every
        self.score_error = score_error
        self.edges = np.array([hi for _, hi in routing.bounds[:-1]], np.int64)
        self.seq = [0] * len(routing.targets)
        self.refs: list = []
        self.steps: list[int] = []
        self.ids: list = []
        self.scores: list = []

    def add(self, step: int, ids: np.ndarray, scores) -> None:
        """One batch: int64 ids and its scores (numpy, or a tensor kept on its device until sent)."""
        self.steps.append(step)
        self.ids.append(ids)
        self.scores.append(scores)
        if len(self.steps) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.steps:
            return
        self._raise_failed_sends()
        scores = [s if isinstance(s, np.ndarray) else s.to("cpu", non_blocking=False).float().numpy()
                  for s in self.scores]
        sizes = np.array([len(i) for i in self.ids], np.int64)
        steps = np.array(self.steps, np.int64)
        ids = np.concatenate(self.ids)
        sc = np.concatenate(scores).astype(np.float32, copy=False)
        self.steps, self.ids, self.scores = [], [], []
        if not np.isfinite(sc).all():  # within `every` steps of a NaN, not an epoch later
            raise self.score_error(ids, sc, self.epoch)
        if len(self.routing.targets) == 1:
            self._send(0, steps, sizes, ids, sc)
            return
        owner = np.searchsorted(self.edges, ids, side="right")
        run_of = np.repeat(np.arange(steps.shape[0]), sizes)
        for j in np.unique(owner):
            sel = owner == j
            self._send(int(j), steps, np.bincount(run_of[sel], minlength=steps.shape[0]), ids[sel], sc[sel])

    def _send(self, j: int, steps, sizes, ids, scores) -> None:
        msg = Observations(self.routing.generation, self.epoch, self.rank, j, self.seq[j], steps, sizes, ids, scores)
        self.refs.append(self.routing.targets[j].observe.remote(msg))
        self.seq[j] += 1

    def _raise_failed_sends(self) -> None:
        """Surface a rejected chunk (a bad id, a restarted shard) within a few chunks, not at the epoch's end."""
        if not self.refs:
            return
        done, self.refs = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        if done:
            ray.get(done)

    def deliver(self) -> None:
        """Send what is buffered and wait until every chunk sent so far is in its shard."""
        self.flush()
        refs, self.refs = self.refs, []
        ray.get(refs)

    def close(self) -> None:
        self.flush()
        for j, target in enumerate(self.routing.targets):
            self.refs.append(target.finish.remote(EpochDone(self.routing.generation, self.epoch, self.rank, j,
                                                            self.seq[j])))
        refs, self.refs = self.refs, []
        ray.get(refs)
