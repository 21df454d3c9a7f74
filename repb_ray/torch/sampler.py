"""PlanSampler: yields this rank's share of the current EpochPlan's ids, shuffled per (seed, epoch)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from repb_ray.core import rng
from repb_ray.core.checks import check_int
from repb_ray.core.plan import EpochPlan


class PlanSampler(Sampler[int]):
    """Every rank shuffles the plan with the same generator (seed, epoch) and takes positions
    rank, rank + world_size, ...; call `set_plan(plan)` before each epoch. The plan size must be
    divisible by world_size (`policy.finish_epoch(world_size=...)` makes it so), so every rank
    gets the same number of samples and DDP steps."""

    def __init__(self, plan: EpochPlan, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got rank={self.rank}")
        self.seed = check_int("seed", seed, minimum=0)
        self.shuffle = shuffle
        self.set_plan(plan)

    def set_plan(self, plan: EpochPlan) -> None:
        if not isinstance(plan, EpochPlan):
            raise TypeError(f"set_plan needs an EpochPlan (policy.plan), got {type(plan).__name__}")
        if len(plan) % self.world_size:
            raise ValueError(f"plan of epoch {plan.epoch} has {len(plan)} samples, not divisible by "
                             f"world_size={self.world_size}; call finish_epoch(world_size={self.world_size})")
        self.plan = plan

    def ids(self) -> np.ndarray:
        ids = self.plan.ids
        if self.shuffle:
            ids = rng.local_order(self.seed, self.plan.epoch).permutation(ids)
        return ids[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.ids().tolist())

    def __len__(self) -> int:
        return len(self.plan) // self.world_size
