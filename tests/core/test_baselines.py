"""InfoBatch (annealing, rescale, reset), Random* and full data."""

import numpy as np
import pytest
from helpers import binomial_tol, run_epoch

from repb_ray.core import make_policy

pytestmark = pytest.mark.unit  # in-process, seconds


def test_infobatch_first_epoch_full_then_prunes_below_mean_with_rescale():
    n, r = 20_000, 0.4
    p = make_policy("infobatch", num_samples=n, seed=0, prune_ratio=r, num_epochs=10, delta=0.875)
    assert len(p.plan) == n and (p.plan.weights == 1).all()
    scores = np.random.default_rng(2).random(n).astype(np.float32)
    plan = run_epoch(p, lambda ids: scores[ids])
    below = scores < scores.astype(np.float64).mean()
    kept = np.isin(np.arange(n), plan.ids)
    assert kept[~below].all()
    assert abs((~kept[below]).mean() - r) < binomial_tol(r, below.sum())
    w = dict(zip(plan.ids.tolist(), plan.weights.tolist()))
    assert all(w[i] == np.float32(1 / (1 - r)) for i in np.flatnonzero(below & kept)[:500])
    assert all(w[i] == 1.0 for i in np.flatnonzero(~below)[:500])


@pytest.mark.parametrize("epochs,delta,full_from", [(10, 0.75, 8), (10, 0.875, 9), (8, 0.875, 8), (7, 0.5, 4)])
def test_infobatch_anneals_last_fraction_rounded_up_and_resets_weights(epochs, delta, full_from):
    n = 2000
    p = make_policy("infobatch", num_samples=n, seed=1, prune_ratio=0.5, num_epochs=epochs, delta=delta)
    for _ in range(epochs - 1):
        plan = run_epoch(p)
        full = plan.epoch >= full_from
        assert (len(plan) == n) == full, plan.epoch
        if full:
            assert (plan.weights == 1.0).all()  # the weight reset happens at non-integer T * delta too
        else:
            assert plan.weights.max() == np.float32(2.0)


def test_infobatch_keeps_stale_scores_of_pruned_samples():
    p = make_policy("infobatch", num_samples=1000, seed=0, prune_ratio=0.5, num_epochs=20)
    run_epoch(p, lambda ids: ids.astype(np.float32))
    pruned = np.setdiff1d(np.arange(1000), p.plan.ids)
    run_epoch(p, lambda ids: np.full(ids.size, 7.0, np.float32))
    np.testing.assert_array_equal(p.shard_array("scores")[pruned], pruned.astype(np.float32))


def test_random_star_size_and_uniform_draws():
    n, r = 10_001, 0.3
    p = make_policy("random", num_samples=n, seed=4, prune_ratio=r)
    sizes, seen = [], np.zeros(n)
    for _ in range(20):
        sizes.append(len(p.plan))
        seen[p.plan.ids] += 1
        assert (p.plan.weights == 1).all()
        run_epoch(p)
    assert set(sizes) == {round((1 - r) * n)}
    # each sample is in the plan with prob. 1 - r per epoch
    assert seen.sum() == 20 * round((1 - r) * n)
    assert abs(seen.std() / 20 - np.sqrt(r * (1 - r) / 20)) < 0.01


def test_random_with_world_size_and_full():
    p = make_policy("random", num_samples=1000, seed=0, prune_ratio=0.5, world_size=3)
    assert len(p.plan) == 498
    f = make_policy("full", num_samples=100, seed=0)
    for _ in range(3):
        plan = run_epoch(f)
        assert len(plan) == 100 and (plan.weights == 1).all()
    assert f.pruned_fraction() == 0.0
