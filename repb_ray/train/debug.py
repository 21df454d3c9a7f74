"""The built-in loop's debug hooks in one place: fault injection (`fail_at`) and the audit of every
rank's ids, weights and scores (`audit`); `debug_hooks` gives a no-op when both are off. Runs in every Train worker."""

from __future__ import annotations

import os

import numpy as np
import ray

from repb_ray.layout import AUDIT_DIR
from repb_ray.train.faults import maybe_fail


class DebugHooks:
    """Off: every hook does nothing."""

    def plan(self, epoch: int) -> None:
        """At an epoch's start, once its plan is published."""

    def batch(self, epoch: int, step: int, batch: dict) -> None:
        """Before a batch is trained."""

    def scores(self, scores) -> None:
        """After a batch is trained: its per-sample scores, as the coordinator gets them."""

    def end(self, epoch: int) -> None:
        """After the epoch's next plan is decided."""


class _On(DebugHooks):
    def __init__(self, cfg, session):
        self.cfg, self.session, self.rank = cfg, session, session.rank
        self.dir = os.path.join(cfg.run_dir, AUDIT_DIR)
        self.rows: list = []

    def plan(self, epoch: int) -> None:
        self.rows = []
        if self.cfg.audit and self.rank == 0:
            ids, weights = ray.get(self.session.coordinator.plan_arrays.remote())
            os.makedirs(self.dir, exist_ok=True)
            np.savez(os.path.join(self.dir, f"plan{epoch:03d}.npz"), ids=ids, weights=weights)

    def batch(self, epoch: int, step: int, batch: dict) -> None:
        maybe_fail(self.cfg.fail_at, self.cfg.run_dir, epoch, step, self.rank, self.session)
        if self.cfg.audit:
            self.rows.append([np.full(len(batch["id"]), step), batch["id"].numpy().copy(),
                              batch["weight"].cpu().numpy().copy()])

    def scores(self, scores) -> None:
        if self.cfg.audit:
            self.rows[-1].append(scores.detach().float().cpu().numpy().copy())

    def end(self, epoch: int) -> None:
        if not self.cfg.audit:
            return
        os.makedirs(self.dir, exist_ok=True)
        if self.rows:
            steps, ids, weights, scores = (np.concatenate(c) for c in zip(*self.rows))
        else:
            steps, ids, scores = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
            weights = scores
        np.savez(os.path.join(self.dir, f"epoch{epoch:03d}_rank{self.rank}.npz"), steps=steps, ids=ids,
                 weights=weights, scores=scores, node=np.array(ray.get_runtime_context().get_node_id()))


def debug_hooks(cfg, session) -> DebugHooks:
    return _On(cfg, session) if cfg.audit or cfg.fail_at else DebugHooks()
