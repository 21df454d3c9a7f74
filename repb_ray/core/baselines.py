"""Baselines without scores: dynamic random pruning (Random*) and full data; runs anywhere."""

from __future__ import annotations

from repb_ray.core.checks import check_bool, check_float
from repb_ray.core.policy import Policy, SelectingShard, SizedPolicy
from repb_ray.core.protocol import Call, step
from repb_ray.core.shard import Shard


class RandomShard(SelectingShard):
    @step
    def draw_keys(self, epoch: int) -> None:
        """Selection keys: this range's uniforms of the epoch's stream."""
        self.tmp.select = self.uniform_keys(epoch)


class RandomPolicy(SizedPolicy):
    """Random*: every epoch (the first included) a uniform random subset of size
    round((1 - prune_ratio) * n) (the ids with the smallest uniforms of the epoch's stream), weight 1.
    With target_pruned, the size is set before each epoch to keep the run on target.
    full_first_epoch=True trains epoch 1 on all the data, as the score-based methods must, so that a
    comparison with them differs in selection only (the budget then counts epoch 1 at n)."""

    name = "random"
    display_name = "Random*"
    SHARD = RandomShard
    PARAMS = {"prune_ratio": 0.5, "full_first_epoch": False, "target_pruned": None, "num_epochs": None}
    KNOB = "prune_ratio"
    DECISIONS = ("size",)
    LABEL_PARAMS = ("prune_ratio", "full_first_epoch")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        p["full_first_epoch"] = check_bool("full_first_epoch", p["full_first_epoch"])
        return p

    def _subset(self, epoch: int, world_size: int):
        k = self._size(epoch)
        if k >= self.num_samples:
            kept = yield Call(Shard.keep_all)
            yield from self._trim_commit(epoch, kept, 0, world_size, {"size": k})
            return
        yield Call(RandomShard.draw_keys, (epoch,))
        kept = yield from self._select_smallest(k, self.num_samples)
        yield from self._trim_commit(epoch, kept, self.num_samples, world_size, {"size": k})

    def conduct_first(self):
        if self.params["full_first_epoch"]:
            kept = yield Call(Shard.keep_all)
            yield from self._trim_commit(1, kept, 0, self.world_size, {"size": self.num_samples})
            return
        yield from self._subset(1, self.world_size)

    def conduct_next(self, world_size: int):
        yield from self._validate()
        yield Call(Shard.check_once)
        yield from self._subset(self.epoch + 1, world_size)


class FullPolicy(Policy):
    """Full data: D_E = D, weight 1."""

    name = "full"
    display_name = "Full data"
    BUDGET = False

    def conduct_next(self, world_size: int):
        yield from self._validate()
        yield Call(Shard.check_once)
        kept = yield Call(Shard.keep_all)
        yield from self._trim_commit(self.epoch + 1, kept, 0, world_size, {})
