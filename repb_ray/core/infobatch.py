"""InfoBatch baseline (Qin et al. 2024): global stale-score soft pruning, 1/(1-r) rescale, annealing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from repb_ray.core.budget import KNOB_CAP, target_size
from repb_ray.core.checks import check_bool, check_float, check_int
from repb_ray.core.exact import digit_sums, group_means, mean_tolerance, scale_exponent
from repb_ray.core.policy import Policy
from repb_ray.core.protocol import Call, step
from repb_ray.core.rng import uniforms
from repb_ray.core.shard import Scratch, Shard


@dataclass
class InfoBatchScratch(Scratch):
    below: np.ndarray | None = None      # scores below the epoch's mean
    rescale: np.ndarray | None = None    # the below-mean samples whose kept weight is 1 / (1 - r)


class InfoBatchShard(Shard):
    SCRATCH = InfoBatchScratch
    tmp: InfoBatchScratch
    STATE = Shard.STATE + ("scores", "rescaled")

    def setup(self) -> None:
        self.scores = np.ones(self.span, np.float32)   # equal for all at start: epoch 1 is full
        self.rescaled = np.zeros(self.span, bool)
        self.ratio = 0.0

    @step
    def absorb(self) -> float:
        """Store this epoch's scores as the samples' last seen loss; max |score| of the range."""
        ids, scores = self.buf.arrays()
        self.seen()
        self.scores[ids - self.lo] = scores
        return float(np.abs(self.scores).max())

    @step
    def score_sum(self) -> float:
        return float(np.add.reduce(self.scores, dtype=np.float64))

    @step
    def below_mean(self, mean: float, tolerance: float) -> bool:
        """Mark the scores below the approximate mean; True when one is within `tolerance` of it."""
        self.tmp.below = self.scores < mean
        return bool((np.abs(self.scores - mean) <= tolerance).any())

    @step
    def score_digits(self, exponent: int) -> np.ndarray:
        return digit_sums(self.scores, None, 1, exponent)

    @step
    def below_exact(self, mean: float) -> None:
        self.tmp.below = self.scores < mean

    @step
    def below_count(self) -> int:
        return int(np.count_nonzero(self.tmp.need("below")))

    @step
    def decide(self, epoch: int, ratio: float) -> int:
        below = self.tmp.take("below")
        keep = np.empty(self.span, bool)
        for start, u in uniforms(self.spec.seed, epoch, self.lo, self.hi):
            a = start - self.lo
            keep[a: a + u.shape[0]] = ~(below[a: a + u.shape[0]] & (u < ratio))
        self.tmp.keep = keep
        self.tmp.rescale = below
        return int(np.count_nonzero(keep))

    def before_commit(self, epoch: int, keep: np.ndarray, info: dict) -> None:
        rescale = self.tmp.rescale
        self.rescaled = np.zeros(self.span, bool) if rescale is None else rescale & keep
        self.ratio = float(info.get("r", 0.0))

    def weights_of(self, local: np.ndarray) -> np.ndarray:
        if not self.rescaled.any():
            return np.ones(local.shape[0], np.float32)
        return np.where(self.rescaled[local], np.float32(1.0 / (1.0 - self.ratio)), np.float32(1.0))

    def state_scalars(self) -> dict:
        return {"ratio": self.ratio}

    def load_arrays(self, arrays: dict, epoch: int) -> None:
        super().load_arrays(arrays, epoch)
        self.ratio = float(arrays["ratio"])


class InfoBatchPolicy(Policy):
    """Score = last loss seen (equal for all at start, so epoch 1 is full). Before epoch e, samples
    with score < mean(all scores) are pruned with prob. r and the kept ones among them weighted
    1/(1-r); epoch e trains on full data with weight 1 iff e > delta * num_epochs (anneal=True;
    anneal=False is InfoBatch*, which prunes every epoch after the first). With target_pruned, r is
    set before each epoch (at most budget.KNOB_CAP) to keep the run on target; the summary says when the
    target is out of reach."""

    name = "infobatch"
    display_name = "InfoBatch"
    SHARD = InfoBatchShard
    PARAMS = {"prune_ratio": 0.5, "num_epochs": ..., "delta": 0.875, "anneal": True, "target_pruned": None}
    KNOB = "prune_ratio"
    DECISIONS = ("r", "full", "knob_capped")
    LABEL_PARAMS = ("anneal", "delta", "prune_ratio")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        p["num_epochs"] = check_int("num_epochs", p["num_epochs"], minimum=1)
        p["delta"] = check_float("delta", p["delta"], lo=0.0, hi=1.0)
        p["anneal"] = check_bool("anneal", p["anneal"])
        return p

    @classmethod
    def label(cls, params: dict, varying: tuple = ()) -> str:
        """InfoBatch without annealing is InfoBatch* (the paper's name)."""
        name = super().label(params, tuple(k for k in varying if k != "anneal"))
        return name.replace(cls.display_name, cls.display_name + ("" if params.get("anneal", True) else "*"), 1)

    def full_data_epoch(self, epoch: int) -> bool:
        return self.params["anneal"] and epoch > self.params["delta"] * self.params["num_epochs"]

    def conduct_next(self, world_size: int):
        p, e = self.params, self.epoch + 1
        yield from self._validate()
        exponent = scale_exponent(max((yield Call(InfoBatchShard.absorb))))
        if self.full_data_epoch(e):
            kept = yield Call(Shard.keep_all)
            yield from self._trim_commit(e, kept, 0, world_size, {"r": 0.0, "full": True})
            return
        n, max_abs = self.num_samples, math.ldexp(1.0, exponent)
        mean = sum((yield Call(InfoBatchShard.score_sum))) / n
        if any((yield Call(InfoBatchShard.below_mean, (mean, mean_tolerance(n, max_abs, exponent))))):
            digits = sum((yield Call(InfoBatchShard.score_digits, (exponent,))))
            exact = float(group_means(digits, np.array([n]), exponent)[0])
            yield Call(InfoBatchShard.below_exact, (exact,))
        below = sum((yield Call(InfoBatchShard.below_count)))
        r = p["prune_ratio"]
        if p["target_pruned"] is not None:
            ahead = sum(self.full_data_epoch(x) for x in range(e + 1, p["num_epochs"] + 1))
            size = target_size(p["target_pruned"], p["num_epochs"], self.num_samples, self.plan_sizes, e, ahead)
            wanted = (self.num_samples - size) / below if below else 0.0
            r = min(max(wanted, 0.0), KNOB_CAP)
            capped = wanted > KNOB_CAP
        else:
            capped = False
        kept = yield Call(InfoBatchShard.decide, (e, r))
        yield from self._trim_commit(e, kept, self.num_samples, world_size, {"r": r, "knob_capped": int(capped)})
