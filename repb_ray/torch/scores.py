"""Per-sample scores for pruning: the loss (default) or the gradient norm at the logits (Table 9)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def loss_score(per_sample_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return per_sample_loss.detach()


def grad_norm_score(per_sample_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """||softmax(z) - onehot(y)||_2: the norm of the cross-entropy gradient at the last layer's output."""
    with torch.no_grad():
        p = F.softmax(logits.detach().float(), dim=1)
        p[torch.arange(p.shape[0], device=p.device), targets] -= 1.0
        return p.norm(dim=1)


SCORE_FUNCTIONS = {"loss": loss_score, "grad_norm": grad_norm_score}


def compute_scores(name: str, per_sample_loss, logits, targets) -> np.ndarray:
    """float32 numpy scores, one per sample of the batch."""
    if name not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown score {name!r}; choose one of: {', '.join(SCORE_FUNCTIONS)}")
    s = SCORE_FUNCTIONS[name](per_sample_loss, logits, targets)
    return s.detach().to("cpu", torch.float32).numpy()
