"""Learning-rate schedules that follow the real (pruned) number of steps: PlanCosineLR (the built-in
loop's cosine), RealStepLR (any torch scheduler), and the optimizer the config names. Plain PyTorch."""

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


def build_optimizer(name: str, params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    """SGD (Nesterov momentum when momentum > 0) or AdamW."""
    import torch
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of sgd, adamw, got optimizer={name!r}")


class RealStepLR:
    """Makes any torch.optim.lr_scheduler follow training progress when pruning shortens epochs.

    Build the scheduler as usual, for `steps_per_epoch` optimizer steps per (full-data) epoch, and wrap
    it. Before each epoch call `start_epoch(epoch, real_steps)` with the epoch's real number of steps;
    each `step()` then advances the wrapped scheduler by steps_per_epoch / real_steps of its own steps
    (an integer number each time, steps_per_epoch per epoch in all), so OneCycleLR, StepLR, cosine or
    warmup schedules keep their shape over epochs instead of stopping short (or running past their
    end) when epochs get shorter. get_last_lr, state_dict and load_state_dict work as on a scheduler.

    Its state is the wrapped scheduler's own, plus its position under STATE_KEY: a trainer that restores
    a checkpoint into the bare scheduler before wrapping it again (Lightning restores schedulers before
    on_train_start) gives the bare scheduler its position, and the new wrapper takes its own from there."""

    STATE_KEY = "real_step_lr"

    def __init__(self, scheduler, steps_per_epoch: int):
        from repb_ray.core.checks import check_int
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        self.epoch, self.real_steps, self.done, self.nominal = 1, self.steps_per_epoch, 0, 0
        restored = scheduler.__dict__.pop(self.STATE_KEY, None)  # left there by load_state_dict of the bare one
        if isinstance(restored, dict):
            self._load_own(restored)

    def start_epoch(self, epoch: int, real_steps: int) -> None:
        """Epoch `epoch` (1-based) takes `real_steps` optimizer steps."""
        self.epoch, self.real_steps, self.done = int(epoch), max(1, int(real_steps)), 0
        self._advance((self.epoch - 1) * self.steps_per_epoch)

    def step(self) -> None:
        self.done += 1
        within = min(self.done * self.steps_per_epoch // self.real_steps, self.steps_per_epoch)
        self._advance((self.epoch - 1) * self.steps_per_epoch + within)

    def _advance(self, target: int) -> None:
        while self.nominal < target:
            self.scheduler.step()
            self.nominal += 1

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return {**self.scheduler.state_dict(),
                self.STATE_KEY: {"epoch": self.epoch, "real_steps": self.real_steps, "done": self.done,
                                 "nominal": self.nominal, "steps_per_epoch": self.steps_per_epoch}}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict({k: v for k, v in state.items() if k != self.STATE_KEY})
        self._load_own(state[self.STATE_KEY])

    def _load_own(self, own: dict) -> None:
        self.epoch, self.real_steps, self.done = int(own["epoch"]), int(own["real_steps"]), int(own["done"])
        self.nominal, self.steps_per_epoch = int(own["nominal"]), int(own["steps_per_epoch"])
