"""One weighted training step and a rank-sharded evaluation, shared by the plain and Ray loops."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from repb_ray.torch.loss import weighted_loss
from repb_ray.torch.scores import compute_scores


def train_step(model, optimizer, x, y, weights, *, score: str = "loss", normalize: bool = False):
    """Forward, CTR-weighted loss, update. Returns (batch loss, float32 scores from the pre-update forward)."""
    model.train()
    logits = model(x)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    loss = weighted_loss(per_sample, weights, normalize=normalize)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), compute_scores(score, per_sample, logits, y)


@torch.no_grad()
def evaluate(model, split, *, batch_size: int, device, rank: int = 0, world_size: int = 1) -> dict:
    """Accuracy and mean loss on `split` (an ArraySplit); ranks take rows rank::world_size and the
    sums are all-reduced when a process group is up."""
    model.eval()
    idx = np.arange(rank, len(split), world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    for start in range(0, idx.shape[0], batch_size):
        rows = idx[start:start + batch_size]
        x = torch.from_numpy(split.features(split.x[rows])).to(device)
        y = torch.from_numpy(split.y[rows]).to(device)
        logits = model(x)
        sums[0] += (logits.argmax(1) == y).sum()
        sums[1] += F.cross_entropy(logits, y, reduction="sum")
        sums[2] += rows.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    correct, loss_sum, count = sums.tolist()
    return {"test_accuracy": correct / max(count, 1), "test_loss": loss_sum / max(count, 1)}
