"""One weighted training step and a sharded evaluation through the Task contract; shared by the
plain PyTorch loop and the Ray worker loop."""

from __future__ import annotations

import torch
import torch.distributed as dist

from repb_ray.task import check_loss
from repb_ray.torch.loss import weighted_loss


def train_step(task, task_path: str, model, optimizer, batch: dict, scorer, *, normalize: bool = False,
               first: bool = False):
    """Forward through task.loss, the CTR-weighted mean, backward, update. Returns (the batch loss,
    detached on its device, and the per-sample scores from the pre-update forward)."""
    model.train()
    per_sample = task.loss(model, batch)
    check_loss(task_path, per_sample, int(batch["id"].shape[0]), first=first)
    weights = batch["weight"].to(per_sample.device, non_blocking=True)
    loss = weighted_loss(per_sample, weights, normalize=normalize)
    scores = scorer(per_sample)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), scores


@torch.no_grad()
def evaluate(task, model, batches, device) -> dict[str, float]:
    """Sum task.metrics over this rank's test batches, all-reduce the sums across ranks (every rank
    takes part, with or without batches), and summarize them."""
    from repb_ray.task import summarize_metrics
    was_training = model.training
    model.eval()
    sums: dict = {}
    for batch in batches:
        for k, v in task.metrics(model, batch).items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
            sums[k] = sums[k] + v.to(device) if k in sums else v.to(device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        keys: list = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted(sums))
        names = sorted(set().union(*map(set, keys)))
        vec = torch.stack([sums.get(k, torch.zeros((), dtype=torch.float64, device=device)).reshape(()).to(device)
                           for k in names]) if names else torch.zeros(0, dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        sums = dict(zip(names, vec.tolist()))
    else:
        sums = {k: float(v) for k, v in sums.items()}
    model.train(was_training)
    return summarize_metrics(task, sums) if sums else {}
