"""Pruning budgets: every policy that can reach target_pruned ends within 1 point of it,
deterministically and across a save/load; InfoBatch says when it cannot."""

import numpy as np
import pytest
from helpers import run_epoch

from repb_ray.core import make_policy
from repb_ray.core.budget import target_size

pytestmark = pytest.mark.unit  # in-process, seconds

N, T = 4000, 8


def _scores(ids, e):
    return ((np.sin(ids * 0.11) + 1.5) * (1.0 + 0.1 * e) + np.cos(ids * (e + 1))).astype(np.float32)


def _cumulative(p):
    return 1.0 - sum(p.plan_sizes[:T]) / (T * N)


def _train(name, target, epochs=T, policy=None, **params):
    p = policy or make_policy(name, num_samples=N, seed=1, world_size=2, target_pruned=target, num_epochs=T, **params)
    while p.epoch < epochs:
        e = p.epoch
        run_epoch(p, lambda ids, e=e: _scores(ids, e), batch=32, rng=np.random.default_rng(e), world_size=2)
    return p


@pytest.mark.parametrize("name,target", [(name, t) for name in ("repb", "random", "egreedy", "ucb")
                                         for t in (0.3, 0.5, 0.7) if (name, t) != ("repb", 0.7)])
def test_budget_is_met_within_one_point(name, target):
    p = _train(name, target)
    assert abs(_cumulative(p) - target) <= 0.01, (p.plan_sizes, p.history)


def test_a_budget_past_the_knob_cap_is_reported_not_forced():
    """RePB at 70% over 8 epochs with epoch 1 full would need rho above the cap every epoch: rho stays at
    KNOB_CAP, every such epoch says knob_capped, and the budget is reported as not reached."""
    from repb_ray.core.budget import KNOB_CAP
    p = _train("repb", 0.7)
    assert all(h["rho"] == KNOB_CAP and h["knob_capped"] for h in p.history[1:])
    assert 0.55 < _cumulative(p) < 0.69 and not p.budget_status(T)["reached"]


def test_repb_budget_sets_one_rho_for_the_epochs_left():
    """The controller spends the budget over the epochs left at one rho under eqs. 1-2 in expectation, not
    the steady state at once: rho in epoch 2 is the run's rho, not a jump to 1."""
    p = _train("repb", 0.5)
    rhos = [h["rho"] for h in p.history[1:]]
    assert max(rhos) < 0.9 and max(rhos) - min(rhos) < 0.1, rhos
    assert all(0.3 < h["below_fraction"] < 0.7 and not h["knob_capped"] for h in p.history[1:])


def test_expected_spend_follows_eqs_1_2():
    """By hand: n = 100, 40 above, 40 below, 20 out, rho 0.5: next 40 + 0.5 * 60 = 70; then with b = 0.5,
    a = 0.35, s = 0.35 + 0.5 * 0.65 = 0.675; without resampling 40 + 20 = 60, then 0.3 + 0.5 * 0.3 = 0.45."""
    from repb_ray.core.repb import expected_spend, rho_for_budget
    assert expected_spend(0.5, 2, 100, 40, 40, 20) == pytest.approx(70 + 67.5)
    assert expected_spend(0.5, 2, 100, 40, 40, 20, resampling=False) == pytest.approx(60 + 45)
    rho, capped = rho_for_budget(137.5, 2, 100, 40, 40, 20, cap=0.9)
    assert rho == pytest.approx(0.5, abs=1e-9) and not capped
    assert rho_for_budget(50, 2, 100, 40, 40, 20, cap=0.9) == (0.9, True)
    assert rho_for_budget(500, 2, 100, 40, 40, 20, cap=0.9) == (0.0, False)


def test_infobatch_budget_reached_when_attainable_and_reported_when_not():
    ok = _train("infobatch", 0.3)
    assert abs(_cumulative(ok) - 0.3) <= 0.01
    assert max(h.get("r", 0) for h in ok.history) < 0.9
    short = _train("infobatch", 0.6)  # only below-mean samples, only before annealing: out of reach
    assert _cumulative(short) < 0.5
    assert short.budget_status(T) == {"target_pruned": 0.6, "pruned": pytest.approx(_cumulative(short)),
                                      "reached": False}
    assert ok.budget_status(T)["reached"]


@pytest.mark.parametrize("name", ["repb", "infobatch", "random", "ucb"])
def test_budget_controller_is_deterministic_and_resumable(name):
    a = _train(name, 0.4)
    half = _train(name, 0.4, epochs=4)
    b = make_policy(name, num_samples=N, seed=1, world_size=2, target_pruned=0.4, num_epochs=T)
    b.load_state_dict(half.state_dict())
    b = _train(name, 0.4, policy=b)
    assert a.plan_sizes == b.plan_sizes and a.history == b.history
    np.testing.assert_array_equal(a.plan.ids, b.plan.ids)


def test_repb_rho_follows_the_budget():
    p = _train("repb", 0.5)
    rhos = [h["rho"] for h in p.history[1:]]
    assert all(0.0 <= r <= 0.9 for r in rhos) and len(set(rhos)) > 1


def test_target_size_spreads_what_is_left():
    assert target_size(0.5, 4, 100, [], 1) == 50
    assert target_size(0.5, 4, 100, [100], 2) == pytest.approx(100 / 3)   # epoch 1 was full
    assert target_size(0.5, 4, 100, [100, 50], 3, full_epochs_ahead=1) == -50.0  # over budget: prune all it can
    assert target_size(0.5, 4, 100, [100] * 4, 5) == 50  # past the horizon: the steady rate


@pytest.mark.parametrize("params,msg", [
    (dict(target_pruned=1.0, num_epochs=3), r"target_pruned must be in \[0, 1\)"),
    (dict(target_pruned=0.5), "needs num_epochs="),
])
def test_bad_budget_arguments(params, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        make_policy("repb", num_samples=10, **params)
