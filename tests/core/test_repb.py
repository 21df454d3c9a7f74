"""RePB semantics: LWP (eq. 1), resampling (eq. 2), CTR weights (eqs. 3-4) and the ablations."""

import numpy as np
import pytest
from helpers import binomial_tol, run_epoch

from repb_ray.core import below_window_mean, ctr_weights, make_policy, next_epoch_set, prune_windows, resample

pytestmark = pytest.mark.unit  # in-process, seconds


def test_prune_windows_keeps_above_mean_and_prunes_below_with_rho():
    rng = np.random.default_rng(0)
    n, W, B, rho = 40_000, 2, 50, 0.3
    steps = np.arange(n, dtype=np.int64) // B
    scores = rng.random(n).astype(np.float32)
    keep = prune_windows(steps, scores, W, rho, rng.random(n))
    win = steps // W
    mu = np.array([scores[win == k].astype(np.float64).mean() for k in range(win.max() + 1)])
    above = scores >= mu[win]
    assert keep[above].all()
    frac = keep[~above].mean()
    assert abs(frac - (1 - rho)) < binomial_tol(1 - rho, (~above).sum())


def test_window_means_are_local_not_global():
    # window 0 holds high scores, window 1 low ones: LWP prunes inside both, a global threshold only window 1
    steps = np.repeat(np.arange(2, dtype=np.int64), 4)
    scores = np.array([10, 11, 12, 13, 0, 1, 2, 3], np.float32)
    u = np.zeros(8)  # every candidate is pruned (rho = 1)
    local = prune_windows(steps, scores, 1, 1.0, u)
    glob = prune_windows(steps, scores, None, 1.0, u)
    assert local.tolist() == [False, False, True, True, False, False, True, True]
    assert glob.tolist() == [True, True, True, True, False, False, False, False]


def test_resample_rate_is_one_minus_rho():
    rng = np.random.default_rng(1)
    in_epoch = rng.random(50_000) < 0.6
    rho = 0.4
    back = resample(in_epoch, rho, rng.random(50_000))
    assert not back[in_epoch].any()
    assert abs(back[~in_epoch].mean() - (1 - rho)) < binomial_tol(1 - rho, (~in_epoch).sum())


def test_policy_lwp_then_resampling_rates():
    n, rho = 30_000, 0.5
    p = make_policy("repb", num_samples=n, seed=3, rho=rho, window=1)
    rng = np.random.default_rng(9)
    scores = rng.random(n).astype(np.float32)
    plan2 = run_epoch(p, lambda ids: scores[ids], batch=100)
    # D_1 = D, so D_2 = D'_2: above-window-mean samples all kept, the others with prob. 1 - rho
    assert len(plan2) < n
    out2 = np.setdiff1d(np.arange(n), plan2.ids)
    plan3 = run_epoch(p, lambda ids: scores[ids], batch=100)
    back = np.isin(out2, plan3.ids).mean()
    assert abs(back - (1 - rho)) < binomial_tol(1 - rho, out2.size)


def test_ctr_weights_are_exactly_epochs_over_counts():
    n = 5000
    p = make_policy("repb", num_samples=n, seed=0, rho=0.7, window=2)
    counts = np.zeros(n, np.int64)
    counts[p.plan.ids] += 1
    for epoch in range(1, 7):
        plan = run_epoch(p, batch=32)
        expected = np.float32(epoch) / counts[plan.ids].astype(np.float32)
        np.testing.assert_array_equal(plan.weights, expected)
        counts[plan.ids] += 1
    np.testing.assert_array_equal(p.counts, counts)
    assert ctr_weights(np.array([1, 2, 4]), 4).tolist() == [4.0, 2.0, 1.0]
    assert ctr_weights(np.array([1, 2, 4]), 4, max_weight=3.0).tolist() == [3.0, 2.0, 1.0]


def test_ablation_switches():
    n = 4000
    no_res = make_policy("repb", num_samples=n, seed=1, rho=0.8, resample=False)
    prev = no_res.plan.ids
    for _ in range(4):
        plan = run_epoch(no_res)
        assert np.isin(plan.ids, prev).all()  # nothing comes back without resampling
        prev = plan.ids
    no_ctr = make_policy("repb", num_samples=n, seed=1, rho=0.8, ctr=False)
    for _ in range(3):
        assert (run_epoch(no_ctr).weights == 1).all()
    # lwp=False: one window for the whole epoch (scores rise with the step, so windows differ)
    glob = make_policy("repb", num_samples=n, seed=1, rho=1.0, lwp=False)
    ramp = lambda ids: (np.arange(ids.size) // 64).astype(np.float32)  # noqa: E731
    plan = run_epoch(glob, ramp, rng=np.random.default_rng(5))
    ids = np.random.default_rng(5).permutation(np.arange(n))
    s = ramp(ids)
    assert set(plan.ids.tolist()) == set(ids[s >= s.mean()].tolist())


def test_ctr_max_caps_weights():
    p = make_policy("repb", num_samples=3000, seed=2, rho=0.9, ctr_max=1.5)
    for _ in range(5):
        assert run_epoch(p).weights.max() <= 1.5


def test_world_size_makes_plan_divisible():
    p = make_policy("repb", num_samples=1001, seed=0, rho=0.5, world_size=4)
    assert len(p.plan) == 1000  # D_1 trimmed by 1 sample
    for _ in range(4):
        plan = run_epoch(p, world_size=4)
        assert len(plan) % 4 == 0
    plan = run_epoch(p, world_size=3)
    assert len(plan) % 3 == 0


def test_the_policy_runs_the_rule_functions():
    """The policy's plans and weights, epoch after epoch, equal the rule composed by hand from the
    functions at the top of core/repb.py (tie-free random scores, one shard and three)."""
    n, window, batch, rho, seed = 5000, 3, 40, 0.45, 4
    for shards in (1, 3):
        p = make_policy("repb", num_samples=n, seed=seed, rho=rho, window=window, shards=shards)
        rng = np.random.default_rng(1)
        in_epoch = np.ones(n, bool)
        counts = np.ones(n, np.int64)
        for e in range(1, 6):
            order = rng.permutation(p.plan.ids)
            steps = (np.arange(order.size) // batch).astype(np.int64)
            scores = (rng.permutation(order.size) / 7.0 + 0.25).astype(np.float32)  # distinct values
            assert np.unique(scores).size == scores.size
            p.observe(steps, order, scores)
            plan = p.finish_epoch()
            below = np.zeros(n, bool)
            below[order] = below_window_mean(scores, steps // window)
            u = np.random.default_rng([seed, e + 1]).random(n)
            expected = next_epoch_set(in_epoch, below, u, rho)
            np.testing.assert_array_equal(plan.ids, np.flatnonzero(expected))
            np.testing.assert_array_equal(plan.weights, ctr_weights(counts[plan.ids], e))
            in_epoch = expected
            counts += expected
