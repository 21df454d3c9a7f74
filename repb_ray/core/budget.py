"""Pruning budgets: the plan size that keeps a run's cumulative pruned fraction on a target, and the
number of optimizer steps a budgeted run takes; runs anywhere.

A budget `target_pruned` = t asks that 1 - sum_E |D_E| / (T n) = t after T epochs. Before each epoch
the target size is what is left of the allowed (1 - t) T n sample-steps, spread evenly over the
epochs left (epochs that must be full, such as InfoBatch's annealing, counted at n). The policies
turn it into their own knob: a size (Random*, egreedy, UCB), rho (RePB), r (InfoBatch). It depends
only on the plan sizes so far, which the policy's state holds.
"""

from __future__ import annotations

import math

from repb_ray.core.checks import check_float, check_int

# The largest pruning probability a budget may set, the same for every method whose knob is one (rho for
# RePB, r for InfoBatch): at 1 RePB would stop resampling altogether and InfoBatch's weights 1 / (1 - r) would
# be unbounded. A run whose knob reaches the cap is marked `knob_capped` in that epoch's decision, and a
# budget it cannot reach is reported (budget_status) instead of being met by going past the cap.
KNOB_CAP = 0.9


def target_size(target: float, num_epochs: int, num_samples: int, plan_sizes: list[int], next_epoch: int,
                full_epochs_ahead: int = 0) -> float:
    """The plan size for `next_epoch` (1-based) that spends the rest of the budget evenly."""
    allowed = (1.0 - target) * num_epochs * num_samples
    left = num_epochs - next_epoch + 1 - full_epochs_ahead
    if left <= 0:  # past the budget's horizon, or only full epochs remain
        return (1.0 - target) * num_samples
    return (allowed - sum(plan_sizes[: next_epoch - 1]) - full_epochs_ahead * num_samples) / left


def clamp_size(size: float, num_samples: int) -> int:
    return int(min(max(round(size), 1), num_samples))


def exact_size(params: dict, num_samples: int, plan_sizes: list[int], epoch: int) -> int:
    """A size-based policy's plan size for `epoch`: round((1 - prune_ratio) n), or with a budget the size
    that spreads what is left of it over the epochs left."""
    if params["target_pruned"] is None:
        return round((1.0 - params["prune_ratio"]) * num_samples)
    return clamp_size(target_size(params["target_pruned"], params["num_epochs"], num_samples, plan_sizes, epoch),
                      num_samples)


def check_keeps_a_sample(params: dict, num_samples: int) -> None:
    """prune_ratio must leave at least one sample of num_samples."""
    if round((1.0 - params["prune_ratio"]) * num_samples) < 1:
        raise ValueError(f"prune_ratio={params['prune_ratio']:g} keeps no sample of num_samples={num_samples}; "
                         "lower prune_ratio")


def check_budget(name: str, p: dict) -> None:
    """Validate target_pruned / num_epochs in a policy's parameters (the policies that take a budget)."""
    if p.get("target_pruned") is None:
        return
    p["target_pruned"] = check_float("target_pruned", p["target_pruned"], lo=0.0, hi=1.0, hi_open=True)
    if p.get("num_epochs") is None:
        raise TypeError(f"policy {name!r} with target_pruned= needs num_epochs= (the run's length)")
    p["num_epochs"] = check_int("num_epochs", p["num_epochs"], minimum=1)


def epoch_sizes(num_samples: int, num_epochs: int, target_pruned: float | None = None,
                first_epoch_full: bool = True) -> list[float]:
    """The expected number of samples trained in each epoch: n every epoch without a budget; with
    one, epoch 1 full (RePB, InfoBatch, egreedy, UCB; first_epoch_full=False for Random*, which
    prunes from epoch 1) and the rest of (1 - t) T n spread evenly over the other epochs."""
    n = check_int("num_samples", num_samples, minimum=1)
    epochs = check_int("epochs", num_epochs, minimum=1)
    if target_pruned is None:
        return [float(n)] * epochs
    t = check_float("target_pruned", target_pruned, lo=0.0, hi=1.0, hi_open=True)
    total = (1.0 - t) * epochs * n
    if not first_epoch_full:
        return [total / epochs] * epochs
    if epochs == 1:
        return [float(n)]
    rest = max(total - n, 0.0) / (epochs - 1)
    return [float(n)] + [min(rest, float(n))] * (epochs - 1)


def total_steps(num_samples: int, num_epochs: int, batch_size: int, target_pruned: float | None = None, *,
                world_size: int = 1, grad_accum_steps: int = 1, drop_last: bool = False,
                first_epoch_full: bool = True) -> int:
    """Optimizer steps of a run: per epoch, its expected samples split over `world_size` ranks in
    batches of `batch_size`, `grad_accum_steps` batches per step (a partial last group is a step).
    Exact without a budget; with one, within one step per epoch of what the run takes (the plan
    sizes are decided epoch by epoch and rounded to the world size)."""
    b = check_int("batch_size", batch_size, minimum=1)
    ws = check_int("world_size", world_size, minimum=1)
    acc = check_int("grad_accum_steps", grad_accum_steps, minimum=1)
    steps = 0
    for size in epoch_sizes(num_samples, num_epochs, target_pruned, first_epoch_full):
        per_rank = int(round(size)) // ws
        batches = per_rank // b if drop_last else math.ceil(per_rank / b)
        steps += math.ceil(batches / acc)
    return steps
