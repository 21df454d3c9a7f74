"""Calibration: the constant knob (rho for RePB, r for InfoBatch) that is expected to reach a pruning
budget over a run, from each method's own dynamics and a below-mean fraction, so a run can use a fixed
knob as the paper does (no controller); runs anywhere."""

from __future__ import annotations

from repb_ray.core.checks import check_float, check_int
from repb_ray.core.repb import rho_for_budget


def calibrate(policy: str, target_pruned: float, epochs: int, below_fraction: float = 0.5, *,
              delta: float = 0.875, anneal: bool = True) -> dict:
    """{"knob": name, "value": the constant knob, "expected_pruned": the fraction it is expected to reach,
    "reachable": whether it reaches target_pruned within [0, 1)}. Epoch 1 is full data (every score-based
    method needs it); `below_fraction` is the share of a trained epoch below its window's (RePB) or the
    global (InfoBatch) mean loss: about 0.5 for symmetric losses, measured from one warm epoch otherwise
    (each epoch's `below_fraction` in a budgeted run's summary). InfoBatch trains epochs after
    delta * epochs on all the data when anneal is on."""
    t = check_float("target_pruned", target_pruned, lo=0.0, hi=1.0, hi_open=True)
    n_epochs = check_int("epochs", epochs, minimum=2)
    b = check_float("below_fraction", below_fraction, lo=0.0, hi=1.0, lo_open=True)
    n = 1_000_000  # fractions of the data; the result does not depend on n
    remaining = (1.0 - t) * n_epochs * n - n   # what is left after the full first epoch
    if policy == "repb":
        above, below = round((1 - b) * n), round(b * n)
        rho, capped = rho_for_budget(remaining, n_epochs - 1, n, above, below, 0, True, cap=1.0 - 1e-12)
        from repb_ray.core.repb import expected_spend
        spent = n + expected_spend(rho, n_epochs - 1, n, above, below, 0)
        return {"knob": "rho", "value": rho, "expected_pruned": 1.0 - spent / (n_epochs * n), "reachable": not capped}
    if policy == "infobatch":
        pruned_epochs = [e for e in range(2, n_epochs + 1) if not (anneal and e > delta * n_epochs)]
        full = n_epochs - 1 - len(pruned_epochs)
        if not pruned_epochs:
            return {"knob": "prune_ratio", "value": 0.0, "expected_pruned": 0.0, "reachable": t == 0.0}
        size = (remaining - full * n) / len(pruned_epochs)      # each pruned epoch keeps n (1 - r b)
        r = (1.0 - size / n) / b
        value = min(max(r, 0.0), 1.0 - 1e-12)
        spent = n + full * n + len(pruned_epochs) * n * (1 - value * b)
        return {"knob": "prune_ratio", "value": value, "expected_pruned": 1.0 - spent / (n_epochs * n),
                "reachable": 0.0 <= r < 1.0}
    raise ValueError(f"calibrate covers the probability knobs of repb and infobatch, got policy={policy!r}; the "
                     "size-based policies (random, egreedy, ucb, orderdp) take prune_ratio = the fraction per epoch")
