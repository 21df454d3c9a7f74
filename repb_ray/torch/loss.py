"""weighted_loss: the CTR-weighted loss of a batch, (1/G) * sum_i w_i * l_i, from per-sample losses."""

from __future__ import annotations

import torch


def weighted_loss(per_sample_loss: torch.Tensor, weights: torch.Tensor, normalize: bool = False,
                  group_size: int | None = None) -> torch.Tensor:
    """mean(w * l) over the batch, or sum(w * l) / group_size when the batch is part of an optimizer
    step of `group_size` samples (gradient accumulation, a partial last batch). `per_sample_loss` must
    be unreduced (build the criterion with reduction='none'). normalize=True rescales the batch's
    weights to mean 1 first."""
    if not isinstance(per_sample_loss, torch.Tensor) or not isinstance(weights, torch.Tensor):
        raise TypeError("weighted_loss needs torch tensors for per_sample_loss and weights, got "
                        f"{type(per_sample_loss).__name__} and {type(weights).__name__}")
    if per_sample_loss.ndim == 0:
        raise ValueError("per_sample_loss is a scalar: the loss is already reduced; build the criterion "
                         "with reduction='none' so there is one loss per sample")
    if per_sample_loss.ndim != 1 or weights.shape != per_sample_loss.shape:
        raise ValueError(f"per_sample_loss and weights must both have shape [batch], got "
                         f"{tuple(per_sample_loss.shape)} and {tuple(weights.shape)}")
    w = weights.to(per_sample_loss.dtype)
    if normalize:
        w = w / w.mean()
    if group_size is None or group_size == per_sample_loss.shape[0]:
        return (w * per_sample_loss).mean()
    if group_size < per_sample_loss.shape[0]:
        raise ValueError(f"group_size={group_size} is smaller than the batch ({per_sample_loss.shape[0]} samples)")
    return (w * per_sample_loss).sum() / group_size
