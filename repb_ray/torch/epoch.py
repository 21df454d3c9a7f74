"""The epoch contract every training loop drives, whichever process decides the plans: EpochSource
(a LocalPruner in each rank, or a PruningSession talking to a Ray run's coordinator) and EpochSteps
(this rank's optimizer steps of one epoch and the group-normalised weighted loss). Plain PyTorch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch

from repb_ray.core.plan import EpochInfo
from repb_ray.torch.loss import weighted_loss


@runtime_checkable
class EpochSource(Protocol):
    """Where an epoch's plan comes from and where its scores go. Per epoch: `begin_epoch(E)`, the
    batches of `loader(...)` (each carries "id" and "weight", the CTR weights), `observe(ids,
    scores, step)` per batch, `end_epoch()` (the next epoch's info once its plan is decided, on
    every rank). `state_dict`/`load_state_dict` save and restore what a resumed run needs."""

    rank: int
    world_size: int

    def begin_epoch(self, epoch: int) -> EpochInfo: ...

    def loader(self, batch_size: int, dataset=None, **options) -> Iterable: ...

    def observe(self, ids, scores: torch.Tensor, step: int | None = None) -> None: ...

    def end_epoch(self) -> EpochInfo: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def group_sizes(samples: int, batch_size: int, grad_accum_steps: int) -> list[int]:
    """The samples of each optimizer step of an epoch of `samples` on this rank, in batches of
    `batch_size` (the last one partial) grouped `grad_accum_steps` at a time (the last group partial)."""
    sizes = [min(batch_size, samples - a) for a in range(0, samples, batch_size)]
    return [sum(sizes[g: g + grad_accum_steps]) for g in range(0, len(sizes), grad_accum_steps)]


class EpochSteps:
    """This rank's optimizer steps in one epoch: `groups[s]` samples in step s, `grad_accum_steps`
    batches per step (the last step partial). Per batch: `loss(per_sample, weights)` at the current
    `step`, then `advance()`, which says whether the batch closed its step."""

    def __init__(self, info: EpochInfo, batch_size: int, grad_accum_steps: int = 1):
        if batch_size < 1 or grad_accum_steps < 1:
            raise ValueError(f"batch_size and grad_accum_steps must be >= 1, got batch_size={batch_size}, "
                             f"grad_accum_steps={grad_accum_steps}")
        self.info, self.accum = info, grad_accum_steps
        self.groups = group_sizes(info.per_rank, batch_size, grad_accum_steps)
        self.batches = math.ceil(info.per_rank / batch_size)
        self.micro = 0   # batches of this rank done in the epoch

    @property
    def step(self) -> int:
        """The optimizer step (0-based, within the epoch) of the next batch."""
        return self.micro // self.accum

    @property
    def group_size(self) -> int:
        return self.groups[self.step]

    def loss(self, per_sample: torch.Tensor, weights: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The batch's share of its step's CTR-weighted mean: summed over the step's batches, the
        gradient is the one of the whole group's weighted mean (accumulation included)."""
        if self.micro >= self.batches:
            raise RuntimeError(f"batch {self.micro + 1} of an epoch of {self.batches} batches on this rank: "
                               "the loader must serve the epoch's plan, and end_epoch() be called at its end")
        return weighted_loss(per_sample, weights, normalize, group_size=self.group_size)

    def advance(self) -> bool:
        """Count the batch; True when it closed an optimizer step."""
        self.micro += 1
        return self.micro % self.accum == 0 or self.micro == self.batches

    def seek(self, micro: int) -> None:
        """Continue after the first `micro` batches (a run resumed within the epoch, at a step's end)."""
        if not 0 <= micro < self.batches or micro % self.accum:
            raise ValueError(f"cannot resume after batch {micro} of an epoch of {self.batches} batches in steps of "
                             f"{self.accum}: a position is the end of an optimizer step within the epoch")
        self.micro = micro

    @property
    def done(self) -> bool:
        return self.micro >= self.batches

    def start(self, schedules, resumed_after: int = 0) -> None:
        """Start the epoch in every loop: continue after the first `resumed_after` batches of an epoch
        resumed within it (the schedules' positions came with its checkpoint), else tell the schedules
        this epoch's step count."""
        if resumed_after:
            self.seek(resumed_after)
        else:
            self.start_schedules(schedules)

    def start_schedules(self, schedules) -> None:
        """Tell every plan-following schedule (PlanCosineLR, RealStepLR) this epoch's real step count."""
        for s in schedules:
            if hasattr(s, "start_epoch"):
                s.start_epoch(self.info.epoch, len(self.groups))
