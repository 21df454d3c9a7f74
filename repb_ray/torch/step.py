"""The training step and the sharded evaluation through the Task contract, shared by the plain
PyTorch loop and the Ray worker loop: CTR-weighted loss, mixed precision (autocast; a grad scaler
for fp16; scores and weights in fp32), gradient accumulation, clipping, channels-last inputs."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from repb_ray.task import check_loss
from repb_ray.torch.loss import weighted_loss

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str):
    """The forward's autocast context: nothing for fp32, else bf16/fp16 autocast on the device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of fp32, bf16, fp16, got precision={precision!r}")
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])


def to_channels_last(batch: dict) -> dict:
    """4-D float tensors (images) in channels-last memory format; the rest as it is."""
    return {k: v.contiguous(memory_format=torch.channels_last)
            if isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point() else v
            for k, v in batch.items()}


class TrainStep:
    """One optimizer step per `grad_accum_steps` batches. The loss of a batch in a group of G
    samples on this rank is (1/G) sum_i w_i l_i (fp32), so the accumulated gradient is the one of
    the whole group's weighted mean: accumulating 2 batches of b equals one batch of 2b. Call
    `batch(...)` for every batch (forward, scores, backward) and `step()` after the group's last."""

    def __init__(self, task, task_path: str, model, optimizer, scorer, *, precision: str = "fp32",
                 grad_clip: float | None = None, normalize: bool = False, channels_last: bool = False,
                 device_type: str = "cpu"):
        self.task, self.task_path, self.model, self.optimizer, self.scorer = task, task_path, model, optimizer, scorer
        self.precision, self.grad_clip, self.normalize, self.channels_last = precision, grad_clip, normalize, channels_last
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None
        self.first = True

    def batch(self, batch: dict, group_size: int | None = None):
        """Forward through task.loss, the weighted loss scaled to the group, backward. Returns (the
        batch's weighted mean loss, detached, and the per-sample scores from this pre-update
        forward, fp32)."""
        self.model.train()
        if self.channels_last:
            batch = to_channels_last(batch)
        n = int(batch["id"].shape[0])
        with autocast(self.precision, self.device_type):
            per_sample = self.task.loss(self.model, batch)
        check_loss(self.task_path, per_sample, n, first=self.first)
        self.first = False
        per_sample = per_sample.float()
        weights = batch["weight"].to(per_sample.device, non_blocking=True)
        loss = weighted_loss(per_sample, weights, normalize=self.normalize)
        scores = self.scorer(per_sample)
        scaled = (loss if group_size is None or group_size == n
                  else weighted_loss(per_sample, weights, normalize=self.normalize, group_size=group_size))
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach(), scores

    def step(self) -> None:
        """Clip (when asked), update, and clear the gradients."""
        if self.scaler is not None:
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def train_step(task, task_path: str, model, optimizer, batch: dict, scorer, *, normalize: bool = False,
               first: bool = False):
    """One batch, one optimizer step, fp32 (the plain loop's step): returns (loss, scores)."""
    step = TrainStep(task, task_path, model, optimizer, scorer, normalize=normalize)
    step.first = first
    out = step.batch(batch)
    step.step()
    return out


@torch.no_grad()
def metric_sums(task, model, batches, device, precision: str = "fp32") -> dict:
    """task.metrics summed over this rank's batches (float64 tensors on `device`); no collective."""
    was_training = model.training
    model.eval()
    device_type = torch.device(device).type
    sums: dict = {}
    try:
        for batch in batches:
            with autocast(precision, device_type):
                metrics = task.metrics(model, batch)
            for k, v in metrics.items():
                v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
                sums[k] = sums[k] + v.to(device) if k in sums else v.to(device)
    finally:
        model.train(was_training)
    return sums


def reduce_metric_sums(task, sums: dict, device) -> dict[str, float]:
    """All-reduce the per-rank sums of `metric_sums` and summarize them through the task."""
    from repb_ray.task import summarize_metrics
    out = reduce_sums(sums, device)
    return summarize_metrics(task, out) if out else {}


def reduce_sums(sums: dict, device) -> dict[str, float]:
    """Sum each key over the ranks (every rank takes part, with or without batches)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        keys: list = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted(sums))
        names = sorted(set().union(*map(set, keys)))
        vec = torch.stack([sums.get(k, torch.zeros((), dtype=torch.float64, device=device)).reshape(()).to(device)
                           for k in names]) if names else torch.zeros(0, dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        out = dict(zip(names, vec.tolist()))
    else:
        out = {k: float(v) for k, v in sums.items()}
    return out


def evaluate(task, model, batches, device, precision: str = "fp32") -> dict[str, float]:
    """Sum task.metrics over this rank's test batches, all-reduce the sums across ranks, and summarize them."""
    return reduce_metric_sums(task, metric_sums(task, model, batches, device, precision), device)
