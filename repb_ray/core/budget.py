"""Pruning budgets: the plan size that keeps a run's cumulative pruned fraction on a target; runs anywhere.

A budget `target_pruned` = t asks that 1 - sum_E |D_E| / (T n) = t after T epochs. Before each epoch
the target size is what is left of the allowed (1 - t) T n sample-steps, spread evenly over the
epochs left (epochs that must be full, such as InfoBatch's annealing, counted at n). The policies
turn it into their own knob: a size (Random*, egreedy, UCB), rho (RePB), r (InfoBatch). It depends
only on the plan sizes so far, which the policy's state holds.
"""

from __future__ import annotations


def target_size(target: float, num_epochs: int, num_samples: int, sizes: list[int], next_epoch: int,
                full_epochs_ahead: int = 0) -> float:
    """The plan size for `next_epoch` (1-based) that spends the rest of the budget evenly."""
    allowed = (1.0 - target) * num_epochs * num_samples
    left = num_epochs - next_epoch + 1 - full_epochs_ahead
    if left <= 0:  # past the budget's horizon, or only full epochs remain
        return (1.0 - target) * num_samples
    return (allowed - sum(sizes[: next_epoch - 1]) - full_epochs_ahead * num_samples) / left


def clamp_size(size: float, num_samples: int) -> int:
    return int(min(max(round(size), 1), num_samples))
