"""Calibration: the fixed knob expected to reach a budget, checked by hand and against the policy itself."""

import numpy as np
import pytest
from helpers import run_epoch

from repb_ray.core import make_policy
from repb_ray.core.calibrate import calibrate

pytestmark = pytest.mark.unit  # in-process, seconds


def test_infobatch_r_by_hand():
    """8 epochs, delta 0.875: epoch 1 full, 2..7 pruned, 8 full. 30% saved leaves 5.6n - 2n = 3.6n over 6
    epochs, 0.6n each = n (1 - r b), so r = 0.4 / 0.5 = 0.8."""
    c = calibrate("infobatch", 0.3, 8)
    assert c["knob"] == "prune_ratio" and c["value"] == pytest.approx(0.8) and c["reachable"]
    assert calibrate("infobatch", 0.6, 8)["reachable"] is False  # below-mean samples alone cannot give 60%


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_the_calibrated_rho_reaches_its_budget_when_run(target):
    """The policy itself at the calibrated fixed rho, on scores whose windows split half below their mean:
    within 2 points of the target over 8 epochs."""
    c = calibrate("repb", target, 8, below_fraction=0.5)
    assert c["reachable"] and c["expected_pruned"] == pytest.approx(target, abs=1e-6)
    p = make_policy("repb", num_samples=4000, seed=2, rho=c["value"], window=1)
    for e in range(7):
        run_epoch(p, batch=64, rng=np.random.default_rng(e))
    assert abs(p.pruned_fraction() - target) < 0.02, (c, p.plan_sizes)


def test_calibrate_names_what_it_covers():
    with pytest.raises(ValueError, match="size-based policies"):
        calibrate("random", 0.5, 8)
    with pytest.raises(ValueError, match="target_pruned must be in"):
        calibrate("repb", 1.0, 8)


def test_the_cli_prints_the_knob_to_set(capsys):
    from repb_ray.cli import main
    assert main(["calibrate", "--policy", "infobatch", "--target-pruned", "0.3", "--epochs", "8"]) == 0
    assert capsys.readouterr().out.startswith("policy_args.prune_ratio: 0.8000   (expected 30.0%")
    assert main(["calibrate", "--target-pruned", "0.3", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == "repb-ray: error: epochs must be >= 2, got epochs=1"
