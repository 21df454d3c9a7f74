"""PlanCosineLR: cosine learning rate over training progress, measured in the plan's real steps."""

from __future__ import annotations

import math


class PlanCosineLR:
    """lr(progress) with progress = (epoch - 1 + step / steps_in_epoch) / epochs, so the schedule
    follows the real (pruned) epoch lengths. Call `start_epoch(epoch, steps)` then `step()` per batch."""

    def __init__(self, optimizer, base_lr: float, epochs: int, warmup_epochs: float = 0.0,
                 min_lr_ratio: float = 0.0):
        self.optimizer, self.base_lr, self.epochs = optimizer, base_lr, epochs
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio
        self.epoch, self.steps_in_epoch, self.step_in_epoch = 1, 1, 0
        self._apply()

    def lr_at(self, progress_epochs: float) -> float:
        if self.warmup_epochs > 0 and progress_epochs < self.warmup_epochs:
            return self.base_lr * max(progress_epochs, 1e-3) / self.warmup_epochs
        t = min(1.0, progress_epochs / self.epochs)
        lo = self.base_lr * self.min_lr_ratio
        return lo + (self.base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * t))

    def start_epoch(self, epoch: int, steps_in_epoch: int) -> None:
        self.epoch, self.steps_in_epoch, self.step_in_epoch = epoch, max(1, steps_in_epoch), 0
        self._apply()

    def step(self) -> None:
        self.step_in_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        lr = self.lr_at(self.epoch - 1 + self.step_in_epoch / self.steps_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "steps_in_epoch": self.steps_in_epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.steps_in_epoch = state["epoch"], state["steps_in_epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self._apply()
