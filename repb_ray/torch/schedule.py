"""The optimizer from the config (SGD or AdamW) and PlanCosineLR: a cosine learning rate over training
progress measured in the plan's real steps."""

from __future__ import annotations

import math


class PlanCosineLR:
    """lr(progress) with progress = (epoch - 1 + step / steps_in_epoch) / epochs, so the schedule
    follows the real (pruned) epoch lengths. Call `start_epoch(epoch, steps)` then `step()` per batch."""

    def __init__(self, optimizer, base_lr: float, epochs: int, warmup_epochs: float = 0.0,
                 min_lr_ratio: float = 0.0, constant: bool = False):
        self.optimizer, self.base_lr, self.epochs, self.constant = optimizer, base_lr, epochs, constant
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio
        self.epoch, self.steps_in_epoch, self.step_in_epoch = 1, 1, 0
        self._apply()

    def lr_at(self, progress_epochs: float) -> float:
        if self.warmup_epochs > 0 and progress_epochs < self.warmup_epochs:
            return self.base_lr * max(progress_epochs, 1e-3) / self.warmup_epochs
        if self.constant:
            return self.base_lr
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


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


def build_optimizer(name: str, params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    """SGD (Nesterov momentum when momentum > 0) or AdamW."""
    import torch
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got optimizer={name!r}")
