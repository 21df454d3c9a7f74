"""Baselines without scores: dynamic random pruning (Random*) and full data; runs anywhere."""

from __future__ import annotations

import numpy as np

from repb_ray.core.checks import check_float
from repb_ray.core.policy import Policy


class RandomPolicy(Policy):
    """Random*: every epoch (the first included) a uniform random subset of size
    round((1 - prune_ratio) * n), weight 1."""

    name = "random"
    PARAMS = {"prune_ratio": 0.5}

    def _check_params(self, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        if round((1.0 - p["prune_ratio"]) * self.num_samples) < 1:
            raise ValueError(f"prune_ratio={p['prune_ratio']:g} keeps no sample of num_samples="
                             f"{self.num_samples}; lower prune_ratio")
        return p

    def _subset(self, rng):
        n = self.num_samples
        k = round((1.0 - self.params["prune_ratio"]) * n)
        if k == n:
            return np.arange(n, dtype=np.int64), np.ones(n, np.float32)
        # the k ids with the smallest uniform keys: a uniform k-subset, in O(n) and already sorted
        keys = rng.random(n)
        chosen = keys <= np.partition(keys, k - 1)[k - 1]
        if np.count_nonzero(chosen) != k:  # tied keys (practically never): break ties by position
            chosen[:] = False
            chosen[np.argpartition(keys, k - 1)[:k]] = True
        ids = np.flatnonzero(chosen).astype(np.int64, copy=False)
        return ids, np.ones(k, np.float32)

    def _first_plan(self, rng):
        return self._subset(rng)

    def _next_plan(self, steps, scores, rng):
        return self._subset(rng)


class FullPolicy(Policy):
    """Full data: D_E = D, weight 1."""

    name = "full"

    def _next_plan(self, steps, scores, rng):
        return self._first_plan(rng)
