"""OrderDP (ICLR 2026): each epoch a uniform candidate pool, then the samples with the largest losses
within it; no reweighting, no annealing, an exact size; runs anywhere.

Epoch 1 is full data (every sample gets a loss). Before epoch E+1: a pool of m = min(n, round(pool * k))
ids drawn uniformly (the smallest uniforms of the epoch's stream), then the k = round((1 - prune_ratio) n)
ids of the pool with the largest last-observed loss (a pruned sample keeps its stale loss, as for the
bandits); ties by id (lower first); weight 1. With target_pruned, k is set before each epoch to keep the
run on target (an exact size, as for Random*). Built from the method's description (uniform pool, top-q
losses within it): `pool` (the pool's size as a multiple of k; default 2) is this harness's parameter,
not a value taken from the paper's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repb_ray.core.checks import check_float
from repb_ray.core.policy import SelectingShard, SelectScratch, SizedPolicy
from repb_ray.core.protocol import Call, step
from repb_ray.core.select import order_keys

_NEVER = np.iinfo(np.uint64).max


@dataclass
class OrderDPScratch(SelectScratch):
    pool: np.ndarray | None = None       # the epoch's uniform candidate pool over the range


class OrderDPShard(SelectingShard):
    SCRATCH = OrderDPScratch
    tmp: OrderDPScratch
    STATE = SelectingShard.STATE + ("loss",)

    def setup(self) -> None:
        self.loss = np.zeros(self.span, np.float32)   # the last observed loss of each sample

    @step
    def absorb(self) -> None:
        """Keep the losses of the samples trained this epoch (exactly the plan's, once each)."""
        ids, scores = self.buf.arrays()
        self.seen()
        self.loss[ids - self.lo] = scores

    @step
    def pool_keys(self, epoch: int) -> None:
        """Selection keys for the pool: this range's uniforms of the epoch's stream."""
        self.tmp.select = self.uniform_keys(epoch)

    @step
    def loss_keys(self) -> None:
        """Keys ordering the pool by descending loss; ids outside the pool never selected."""
        pool = self.tmp.take("keep")
        keys = order_keys(self.loss, largest=True)
        keys[~pool] = _NEVER
        self.tmp.select = keys


class OrderDPPolicy(SizedPolicy):
    name = "orderdp"
    display_name = "OrderDP"
    SHARD = OrderDPShard
    PARAMS = {"prune_ratio": 0.5, "pool": 2.0, "target_pruned": None, "num_epochs": None}
    KNOB = "prune_ratio"
    DECISIONS = ("size", "pool_size")
    LABEL_PARAMS = ("pool", "prune_ratio")

    @classmethod
    def _check_params(cls, p: dict) -> dict:
        p["prune_ratio"] = check_float("prune_ratio", p["prune_ratio"], lo=0.0, hi=1.0, hi_open=True)
        p["pool"] = check_float("pool", p["pool"], lo=1.0)
        return p

    def conduct_next(self, world_size: int):
        e, n = self.epoch + 1, self.num_samples
        yield from self._validate()
        yield Call(OrderDPShard.absorb)
        k = self._size(e)
        m = min(n, max(k, round(self.params["pool"] * k)))
        yield Call(OrderDPShard.pool_keys, (e,))
        yield from self._select_smallest(m, n)
        yield Call(OrderDPShard.loss_keys)
        kept = yield from self._select_smallest(k, n)
        yield from self._trim_commit(e, kept, n, world_size, {"size": k, "pool_size": m})
