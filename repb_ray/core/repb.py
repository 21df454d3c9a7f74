"""RePB (paper sec. 3): local window pruning, uniform resampling, cumulative temporal rescaling."""

from __future__ import annotations

import numpy as np

from repb_ray.core.checks import check_bool, check_float, check_int
from repb_ray.core.policy import Policy


def prune_windows(steps: np.ndarray, scores: np.ndarray, window: int | None, rho: float,
                  u: np.ndarray) -> np.ndarray:
    """LWP (eq. 1): keep mask; sample i in window k = steps // window is kept iff
    s_i >= mu_k or u_i >= rho. window=None makes the whole epoch one window."""
    win = np.zeros_like(steps) if window is None else steps // window
    counts = np.bincount(win)
    sums = np.bincount(win, weights=scores.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = sums / counts
    return (scores >= mu[win]) | (u >= rho)


def resample(in_epoch: np.ndarray, rho: float, u: np.ndarray) -> np.ndarray:
    """Uniform resampling (eq. 2): mask over all ids of the samples of D \\ D_E (in_epoch False)
    that join D_{E+1}, each with probability 1 - rho."""
    return ~in_epoch & (u < 1.0 - rho)


def ctr_weights(counts: np.ndarray, epoch: int, max_weight: float | None = None) -> np.ndarray:
    """CTR (eqs. 3-4): w_i = E / N_i(E) for epoch E+1. A sample never trained yet (N_i = 0, only
    possible for ones moved out of D_1 to fit the world size) is weighted as if seen once."""
    w = np.float32(epoch) / np.maximum(counts, 1).astype(np.float32)
    if max_weight is not None:
        np.minimum(w, np.float32(max_weight), out=w)
    return w


class RePBPolicy(Policy):
    """RePB with the paper's ablation switches (Table 10) and an optional CTR weight cap."""

    name = "repb"
    PARAMS = {"rho": 0.5, "window": 1, "lwp": True, "resample": True, "ctr": True, "ctr_max": None}

    def _check_params(self, p: dict) -> dict:
        p["rho"] = check_float("rho", p["rho"], lo=0.0, hi=1.0)
        p["window"] = check_int("window", p["window"], minimum=1)
        for key in ("lwp", "resample", "ctr"):
            p[key] = check_bool(key, p[key])
        if p["ctr_max"] is not None:
            p["ctr_max"] = check_float("ctr_max", p["ctr_max"], lo=1.0)
        return p

    def _next_plan(self, steps, scores, rng):
        p, plan = self.params, self.plan
        u = rng.random(self.num_samples)  # one U per id, in id order
        keep = prune_windows(steps, scores, p["window"] if p["lwp"] else None, p["rho"], u[plan.ids])
        chosen = np.zeros(self.num_samples, dtype=bool)
        chosen[plan.ids[keep]] = True
        if p["resample"]:
            in_epoch = np.zeros(self.num_samples, dtype=bool)
            in_epoch[plan.ids] = True
            chosen |= resample(in_epoch, p["rho"], u)
        ids = np.flatnonzero(chosen).astype(np.int64, copy=False)
        if p["ctr"]:
            weights = ctr_weights(self.counts[ids], self.epoch, p["ctr_max"])
        else:
            weights = np.ones(ids.shape[0], np.float32)
        return ids, weights
