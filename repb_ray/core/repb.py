"""RePB (paper sec. 3): the rule as pure functions on plain arrays (eqs. 1-4), then the shard and
policy that run exactly these functions on the id ranges of a run; runs anywhere.

    eq. 1  LWP: i in D_E stays in D'_{E+1} iff s_i >= mu_k(i) or U_i >= rho   (lwp_keep)
           mu_k = the mean score of window k = the W consecutive global steps k W .. (k+1) W - 1
    eq. 2  resampling: j in D \\ D_E joins D_{E+1} iff U_j < 1 - rho            (resample)
           D_{E+1} = D'_{E+1} + the resampled ids                              (next_epoch_set)
    eqs. 3-4  CTR: in epoch E+1, w_i = E / N_i(E), N_i(E) = #{e <= E : i in D_e} (ctr_weights)

U_i is the uniform of id i in the epoch's draw stream (core.rng: default_rng([seed, E+1]), one per
id in id order). "Below the window mean" is decided exactly (core.exact): `below_window_mean` on
one array; RePBShard reaches the same mask across shards with partial sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repb_ray.core.budget import KNOB_CAP, target_size
from repb_ray.core.checks import check_bool, check_float, check_int
from repb_ray.core.exact import digit_sums, group_means, mean_tolerance, scale_exponent
from repb_ray.core.policy import Policy
from repb_ray.core.protocol import Call, step
from repb_ray.core.rng import uniforms
from repb_ray.core.shard import Scratch, Shard

# -- the rule --------------------------------------------------------------------------------------


def window_of(steps: np.ndarray, window: int | None) -> np.ndarray:
    """The window k = step // W of each observation (window=None: the whole epoch is window 0)."""
    return np.zeros_like(steps) if window is None else steps // window


def below_window_mean(scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """s_i < mu_k(i), with mu_k the exact mean of window k's float32 scores (ties are not below)."""
    scores = np.asarray(scores, np.float32)
    num = int(windows.max()) + 1 if windows.size else 0
    t = scale_exponent(float(np.abs(scores).max())) if scores.size else 0
    mu = group_means(digit_sums(scores, windows, num, t), np.bincount(windows, minlength=num), t)
    return scores < mu[windows]


def lwp_keep(below: np.ndarray, u: np.ndarray, rho: float) -> np.ndarray:
    """LWP (eq. 1) for samples of D_E: kept iff not below its window mean, or U >= rho."""
    return ~below | (u >= rho)


def resample(in_epoch: np.ndarray, rho: float, u: np.ndarray) -> np.ndarray:
    """Uniform resampling (eq. 2): mask over all ids of the samples of D \\ D_E (in_epoch False)
    that join D_{E+1}, each with probability 1 - rho."""
    return ~in_epoch & (u < 1.0 - rho)


def next_epoch_set(in_epoch: np.ndarray, below: np.ndarray, u: np.ndarray, rho: float,
                   resampling: bool = True) -> np.ndarray:
    """D_{E+1} as a mask over ids (eqs. 1-2): the samples of D_E that LWP keeps, plus the resampled
    ones. `below` matters only where in_epoch is True."""
    keep = in_epoch & lwp_keep(below, u, rho)
    if resampling:
        keep |= resample(in_epoch, rho, u)
    return keep


def ctr_weights(counts: np.ndarray, epoch: int, max_weight: float | None = None) -> np.ndarray:
    """CTR (eqs. 3-4): w_i = E / N_i(E) for epoch E+1. A sample never trained yet (N_i = 0, only
    possible for ones moved out of D_1 to fit the world size) is weighted as if seen once."""
    w = np.float32(epoch) / np.maximum(counts, 1).astype(np.float32)
    if max_weight is not None:
        np.minimum(w, np.float32(max_weight), out=w)
    return w


def prune_windows(steps: np.ndarray, scores: np.ndarray, window: int | None, rho: float,
                  u: np.ndarray) -> np.ndarray:
    """LWP (eq. 1) on one epoch's observations: keep mask; sample i in window k = steps // window is
    kept iff s_i >= mu_k or u_i >= rho. window=None makes the whole epoch one window."""
    return lwp_keep(below_window_mean(scores, window_of(steps, window)), u, rho)


# -- the rule on an id range, inside the end-of-epoch protocol --------------------------------------

def ceil32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= x (float64), elementwise."""
    f = x.astype(np.float32)
    return np.where(f < x, np.nextafter(f, np.float32(np.inf)), f)


def floor32(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x (float64), elementwise."""
    f = x.astype(np.float32)
    return np.where(f > x, np.nextafter(f, np.float32(-np.inf)), f)


def rho_for_size(size: float, above: int, below: int, out: int) -> float:
    """The rho whose expected plan size above + (1 - rho)(below + out) is `size`, within [0, 1]."""
    candidates = below + out
    if candidates == 0:
        return 0.0
    return float(min(max(1.0 - (size - above) / candidates, 0.0), 1.0))


def expected_spend(rho: float, epochs: int, num_samples: int, above: int, below: int, out: int,
                   resampling: bool = True) -> float:
    """The sample-steps of the next `epochs` epochs at a constant rho, under eqs. 1-2 in expectation:
    the next set is the above-mean part of this epoch's plus (1 - rho) of the rest (exact counts now);
    after it, fractions s of the data follow s' = a + (1 - rho)(1 - a), a = s (1 - b) (without resampling
    s' = a + (1 - rho) s b), b = below / (above + below), the below-mean fraction measured this epoch."""
    n = float(num_samples)
    b = below / max(above + below, 1)
    s = (above + (1.0 - rho) * (below + (out if resampling else 0))) / n
    total = 0.0
    for _ in range(epochs):
        total += s * n
        a = s * (1.0 - b)
        s = a + (1.0 - rho) * ((1.0 - a) if resampling else s * b)
    return total


def rho_for_budget(remaining: float, epochs: int, num_samples: int, above: int, below: int, out: int,
                   resampling: bool = True, cap: float = 1.0) -> tuple[float, bool]:
    """The one constant rho in [0, cap] whose expected_spend over the `epochs` left is `remaining`
    (bisection: the spend falls as rho grows), and whether the budget wanted more than `cap`."""
    def spend(rho):
        return expected_spend(rho, epochs, num_samples, above, below, out, resampling)
    if spend(0.0) <= remaining:
        return 0.0, False
    if spend(cap) > remaining:
        return cap, True
    lo, hi = 0.0, cap
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spend(mid) > remaining else (lo, mid)
    return hi, False


@dataclass
class RePBScratch(Scratch):
    runs: tuple | None = None            # (window of each run of observations, run lengths)
    below: np.ndarray | None = None      # per observation: below its window's mean (approximate compare)
    unsure: np.ndarray | None = None     # per observation: too close to its window's mean to tell yet
    state: np.ndarray | None = None      # per id: 0 not in D_E, 1 at or above its window mean, 2 below


class RePBShard(Shard):
    """One id range: marks each observed sample at/above (1) or below (2) its window's mean, then
    applies next_epoch_set with this range's uniforms; weights by ctr_weights."""

    SCRATCH = RePBScratch
    tmp: RePBScratch

    @step
    def window_sums(self, window: int, num_windows: int):
        """Float64 sums (any order) and counts of the scores per window (window 0: one per epoch)."""
        steps, starts, lengths = self.buf.run_arrays()
        run_win = window_of(steps, window or None)
        self.tmp.runs = run_win, lengths
        _, scores = self.buf.arrays()
        sums = np.add.reduceat(scores, starts, dtype=np.float64) if starts.size else np.zeros(0)
        return (np.bincount(run_win, weights=sums, minlength=num_windows),
                np.bincount(run_win, weights=lengths, minlength=num_windows).astype(np.int64))

    @step
    def below_mean(self, mu: np.ndarray, tolerance: float) -> list[int]:
        """Compare each score with its window's approximate mean; returns the windows that hold a
        score within `tolerance` of it (they need the exact mean), else marks the samples.
        Comparisons run on float32 against thresholds rounded outward, which is exact for float32
        scores: s < t iff s < ceil32(t), and s >= t iff s >= ceil32(t)."""
        run_win, lengths = self.tmp.need("runs")
        _, scores = self.buf.arrays()
        mu_run = mu[run_win]
        below = scores < np.repeat(ceil32(mu_run), lengths)
        slack = 1.25 * tolerance  # covers the rounding of mu +- tolerance
        lo, hi = ceil32(mu_run - slack), floor32(mu_run + slack)
        near = lo <= hi  # runs whose window mean has a float32 value this close
        if not near.any():
            self._mark(below)
            return []
        if (np.nextafter(lo[near], np.float32(np.inf)) > hi[near]).all():  # one such value each
            unsure = scores == np.repeat(np.where(near, lo, np.float32(np.nan)), lengths)
        else:
            unsure = (scores >= np.repeat(lo, lengths)) & (scores <= np.repeat(hi, lengths))
        if not unsure.any():
            self._mark(below)
            return []
        self.tmp.below, self.tmp.unsure = below, unsure
        return np.unique(np.repeat(run_win, lengths)[unsure]).tolist()

    def _obs_windows(self) -> np.ndarray:
        run_win, lengths = self.tmp.need("runs")
        return np.repeat(run_win, lengths)

    @step
    def exact_sums(self, exponent: int, windows: np.ndarray) -> np.ndarray:
        """Exact digit sums of the scores of the listed (sorted) windows."""
        obs_win = self._obs_windows()
        sel = np.isin(obs_win, windows)
        _, scores = self.buf.arrays()
        return digit_sums(scores[sel], np.searchsorted(windows, obs_win[sel]), windows.shape[0], exponent)

    @step
    def resolve(self, windows: np.ndarray, mu: np.ndarray) -> None:
        """Decide the unsure samples with the exact means of their windows (a shard that had none
        decided all its samples in below_mean)."""
        if self.tmp.unsure is None:
            return
        below, unsure = self.tmp.take("below"), self.tmp.take("unsure")
        _, scores = self.buf.arrays()
        below[unsure] = scores[unsure] < mu[np.searchsorted(windows, self._obs_windows()[unsure])]
        self._mark(below)

    def _mark(self, below: np.ndarray) -> None:
        self.tmp.state = self.seen(below)  # 0: not in D_E, 1: at or above its window mean, 2: below

    @step
    def plan_counts(self) -> tuple[int, int, int]:
        """(above, below, out): plan samples at or above their window mean, below it, ids not in the plan."""
        n_below = int(np.count_nonzero(self.tmp.state == 2))
        return self.plan_size - n_below, n_below, self.span - self.plan_size

    @step
    def decide(self, epoch: int, rho: float, resampling: bool) -> int:
        """D_{E+1} on this range: next_epoch_set with this range's uniforms of the epoch's stream."""
        state = self.tmp.take("state")
        keep = np.empty(self.span, bool)
        for start, u in uniforms(self.spec.seed, epoch, self.lo, self.hi):
            a = start - self.lo
            st = state[a: a + u.shape[0]]
            keep[a: a + u.shape[0]] = next_epoch_set(st != 0, st == 2, u, rho, resampling)
        self.tmp.keep = keep
        return int(np.count_nonzero(keep))

    def weights_of(self, local: np.ndarray) -> np.ndarray:
        p = self.spec.params
        if self.epoch <= 1 or not p["ctr"]:
            return np.ones(local.shape[0], np.float32)
        # N_i(E) = counts - 1 for the plan of epoch E + 1: ctr_weights of every possible count once,
        # then one gather (elementwise the same values as ctr_weights on the counts).
        table = ctr_weights(np.arange(-1, self.epoch + 1, dtype=np.int32), self.epoch - 1, p["ctr_max"])
        return table[self.counts[local]]


def window_means(stats: dict, window: int):
    """Conduct the window means of an epoch: approximate sums, then the exact means of the windows
    where a score is too close to call; leaves each shard's samples marked above/below."""
    exponent = scale_exponent(stats["max_abs"])
    num_windows = stats["max_step"] // window + 1 if window else 1
    parts = yield Call(RePBShard.window_sums, (window, num_windows))
    sums, counts = sum(x[0] for x in parts), sum(x[1] for x in parts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = sums / counts
    tol = mean_tolerance(int(counts.max()), stats["max_abs"], exponent)
    unsure = yield Call(RePBShard.below_mean, (mu, tol))
    windows = np.array(sorted(set().union(*unsure)), np.int64)
    if windows.size:
        digits = sum((yield Call(RePBShard.exact_sums, (exponent, windows))))
        yield Call(RePBShard.resolve, (windows, group_means(digits, counts[windows], exponent)))


class RePBPolicy(Policy):
    """RePB with the paper's ablation switches (Table 10), an optional CTR weight cap and an optional
    pruning budget (`target_pruned`: rho is set before each epoch to keep the run on target)."""

    name = "repb"
    display_name = "RePB"
    SHARD = RePBShard
    PARAMS = {"rho": 0.5, "window": 1, "lwp": True, "resample": True, "ctr": True, "ctr_max": None,
              "target_pruned": None, "num_epochs": None}
    KNOB = "rho"
    DECISIONS = ("rho", "below_fraction", "knob_capped")
    LABEL_PARAMS = ("window", "rho", "lwp", "resample", "ctr", "ctr_max")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["rho"] = check_float("rho", p["rho"], lo=0.0, hi=1.0)
        p["window"] = check_int("window", p["window"], minimum=1)
        for key in ("lwp", "resample", "ctr"):
            p[key] = check_bool(key, p[key])
        if p["ctr_max"] is not None:
            p["ctr_max"] = check_float("ctr_max", p["ctr_max"], lo=1.0)
        return p

    def conduct_next(self, world_size: int):
        p, e = self.params, self.epoch + 1
        stats = yield from self._validate()
        if stats["max_step"] >= max(stats["m"], 1):
            raise ValueError(f"steps must count global steps within the epoch (0, 1, ...), got step "
                             f"{stats['max_step']} for {stats['m']} observed samples in epoch {self.epoch}")
        yield from window_means(stats, p["window"] if p["lwp"] else 0)
        counts = yield Call(RePBShard.plan_counts)
        above, below, out = (sum(c[j] for c in counts) for j in range(3))
        rho, decision = p["rho"], {}
        if p["target_pruned"] is not None:
            rho, capped = self._budget_rho(e, above, below, out)
            decision = {"below_fraction": below / max(above + below, 1), "knob_capped": int(capped)}
        kept = yield Call(RePBShard.decide, (e, rho, p["resample"]))
        yield from self._trim_commit(e, kept, self.num_samples, world_size, {"rho": rho, **decision})

    def _budget_rho(self, e: int, above: int, below: int, out: int) -> tuple[float, bool]:
        """The constant rho that spends what is left of the budget over the epochs left (expected_spend),
        re-solved before each epoch from this epoch's counts; past the budget's horizon, the size of an
        epoch at the target."""
        p, n = self.params, self.num_samples
        left = p["num_epochs"] - e + 1
        if left <= 0:
            size = target_size(p["target_pruned"], p["num_epochs"], n, self.plan_sizes, e)
            return min(rho_for_size(size, above, below, out if p["resample"] else 0), KNOB_CAP), False
        remaining = (1.0 - p["target_pruned"]) * p["num_epochs"] * n - sum(self.plan_sizes[: e - 1])
        return rho_for_budget(remaining, left, n, above, below, out, p["resample"], KNOB_CAP)
