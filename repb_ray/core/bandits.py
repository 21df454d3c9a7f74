"""Dynamic bandit-style baselines of Raju et al. (2021, "Accelerating deep learning with dynamic data
pruning"): epsilon-greedy and UCB selection on running per-sample loss statistics; runs anywhere.

Scores come from the training losses the harness already observes (no extra scoring pass): a
sample's statistics are updated when it is trained, so pruned samples keep stale ones. Epoch 1 is
full data; then every `select_every` epochs (default 1, from epoch 2) a new subset of size
round((1 - prune_ratio) n) is selected and kept until the next selection, weight 1.
- egreedy: the round((1 - epsilon) k) samples with the largest score (EMA of the loss, factor
  ema_alpha), plus round(epsilon k) drawn uniformly from the rest (the smallest uniforms of the epoch's
  stream among them).
- ucb: the k samples with the largest mean + c * std, mean and variance being exponential moving
  statistics of the loss (factor ema_alpha).
Ties are broken by id (lower first). The defaults (epsilon 0.1, c 1.0, ema_alpha 0.8) are this
harness's; the paper tunes them per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repb_ray.core.budget import clamp_size, target_size
from repb_ray.core.checks import check_float, check_int
from repb_ray.core.policy import Policy, SelectingShard, SelectScratch
from repb_ray.core.protocol import Call, step
from repb_ray.core.select import order_keys

_NEVER = np.iinfo(np.uint64).max


@dataclass
class BanditScratch(SelectScratch):
    greedy: np.ndarray | None = None     # the greedy picks, while the uniform part is selected


class BanditShard(SelectingShard):
    SCRATCH = BanditScratch
    tmp: BanditScratch
    STATE = SelectingShard.STATE + ("mean", "var", "observed")

    def setup(self) -> None:
        self.mean = np.zeros(self.span, np.float32)
        self.var = np.zeros(self.span, np.float32)
        self.observed = np.zeros(self.span, bool)

    @step
    def absorb(self, alpha: float) -> None:
        """Update the running statistics of the samples trained this epoch."""
        ids, scores = self.buf.arrays()
        self.seen()
        local = ids - self.lo
        first = ~self.observed[local]
        m, v = self.mean[local], self.var[local]
        delta = scores - m
        a = np.float32(alpha)
        new_m = np.where(first, scores, m + a * delta).astype(np.float32)
        new_v = np.where(first, np.float32(0), (np.float32(1) - a) * (v + a * delta * delta)).astype(np.float32)
        self.mean[local], self.var[local] = new_m, new_v
        self.observed[local] = True

    @step
    def greedy_keys(self, ucb_c: float | None) -> None:
        """Selection keys ordering the samples by descending score (EMA, or mean + c * std)."""
        score = self.mean.astype(np.float64)
        if ucb_c is not None:
            score += ucb_c * np.sqrt(self.var.astype(np.float64))
        self.tmp.select = order_keys(score, largest=True)

    @step
    def explore_keys(self, epoch: int) -> None:
        """Keys for the uniform part: the epoch's uniforms, greedy picks excluded."""
        greedy = self.tmp.take("keep")
        self.tmp.greedy = greedy
        keys = self.uniform_keys(epoch)
        keys[greedy] = _NEVER
        self.tmp.select = keys

    @step
    def join_greedy(self) -> int:
        self.tmp.keep |= self.tmp.take("greedy")
        return int(np.count_nonzero(self.tmp.keep))

    @step
    def keep_plan(self) -> int:
        return self.keep_mask(self.in_plan.copy())


class _BanditPolicy(Policy):
    SHARD = BanditShard
    UCB = False
    KNOB = "prune_ratio"
    DECISIONS = ("size", "selected")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        p["ema_alpha"] = check_float("ema_alpha", p["ema_alpha"], lo=0.0, hi=1.0, lo_open=True)
        p["select_every"] = check_int("select_every", p["select_every"], minimum=1)
        return p

    def _size(self, epoch: int) -> int:
        p = self.params
        if p["target_pruned"] is None:
            return max(1, round((1.0 - p["prune_ratio"]) * self.num_samples))
        return clamp_size(target_size(p["target_pruned"], p["num_epochs"], self.num_samples, self.plan_sizes, epoch),
                          self.num_samples)

    def conduct_next(self, world_size: int):
        p, e = self.params, self.epoch + 1
        yield from self._validate()
        yield Call(BanditShard.absorb, (p["ema_alpha"],))
        if (e - 2) % p["select_every"]:
            kept = yield Call(BanditShard.keep_plan)  # between selections the subset stays
            yield from self._trim_commit(e, kept, 0, world_size, {"size": sum(kept), "selected": False})
            return
        k = self._size(e)
        explore = round(p["epsilon"] * k) if not self.UCB else 0
        yield Call(BanditShard.greedy_keys, (p["ucb_c"] if self.UCB else None,))
        kept = yield from self._select_smallest(k - explore, self.num_samples)
        consumed = 0
        if explore:
            yield Call(BanditShard.explore_keys, (e,))
            yield from self._select_smallest(explore, self.num_samples)
            kept = yield Call(BanditShard.join_greedy)
            consumed = self.num_samples
        yield from self._trim_commit(e, kept, consumed, world_size, {"size": k, "selected": True})


class EpsilonGreedyPolicy(_BanditPolicy):
    name = "egreedy"
    display_name = "ε-greedy"
    PARAMS = {"prune_ratio": 0.5, "epsilon": 0.1, "ema_alpha": 0.8, "select_every": 1,
              "target_pruned": None, "num_epochs": None}
    LABEL_PARAMS = ("epsilon", "select_every", "prune_ratio")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["epsilon"] = check_float("epsilon", p["epsilon"], lo=0.0, hi=1.0)
        return super()._check_params(p)


class UCBPolicy(_BanditPolicy):
    name = "ucb"
    display_name = "UCB"
    UCB = True
    PARAMS = {"prune_ratio": 0.5, "ucb_c": 1.0, "ema_alpha": 0.8, "select_every": 1,
              "target_pruned": None, "num_epochs": None}
    LABEL_PARAMS = ("ucb_c", "select_every", "prune_ratio")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["ucb_c"] = check_float("ucb_c", p["ucb_c"], lo=0.0)
        return super()._check_params(p)
