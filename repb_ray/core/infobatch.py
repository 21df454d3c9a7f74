"""InfoBatch baseline (Qin et al. 2024): global stale-score soft pruning, 1/(1-r) rescale, annealing."""

from __future__ import annotations

import numpy as np

from repb_ray.core.checks import check_float, check_int
from repb_ray.core.policy import Policy


class InfoBatchPolicy(Policy):
    """Score = last loss seen (equal for all at start, so epoch 1 is full). Before epoch e, samples
    with score < mean(all scores) are pruned with prob. r and the kept ones among them weighted
    1/(1-r); epoch e trains on full data with weight 1 iff e > delta * num_epochs."""

    name = "infobatch"
    PARAMS = {"prune_ratio": 0.5, "num_epochs": ..., "delta": 0.875}

    def _check_params(self, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        p["num_epochs"] = check_int("num_epochs", p["num_epochs"], minimum=1)
        p["delta"] = check_float("delta", p["delta"], lo=0.0, hi=1.0)
        return p

    def _first_plan(self, rng):
        self.scores = np.ones(self.num_samples, dtype=np.float32)
        return super()._first_plan(rng)

    def full_data_epoch(self, epoch: int) -> bool:
        return epoch > self.params["delta"] * self.params["num_epochs"]

    def _next_plan(self, steps, scores, rng):
        self.scores[self.plan.ids] = scores
        n, r = self.num_samples, self.params["prune_ratio"]
        if self.full_data_epoch(self.epoch + 1):
            return np.arange(n, dtype=np.int64), np.ones(n, np.float32)
        well_learned = self.scores < self.scores.mean(dtype=np.float64)
        pruned = well_learned & (rng.random(n) < r)
        ids = np.flatnonzero(~pruned).astype(np.int64)
        weights = np.where(well_learned[ids], np.float32(1.0 / (1.0 - r)), np.float32(1.0))
        return ids, weights.astype(np.float32)

    def _extra_state(self) -> dict:
        return {"scores": self.scores.copy()}

    def _load_extra_state(self, state: dict) -> None:
        self.scores = np.array(state["scores"], dtype=np.float32, copy=True)
