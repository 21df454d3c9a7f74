"""OrderDP: a uniform pool of the epoch's stream, then the largest last-observed losses within it;
weight 1, an exact size; and Random* with a full first epoch."""

import numpy as np
import pytest
from helpers import run_epoch

from repb_ray.core import make_policy

pytestmark = pytest.mark.unit  # in-process, seconds


def test_orderdp_keeps_the_largest_losses_of_the_uniform_pool():
    """Derived by hand: the pool is the m ids with the smallest uniforms of default_rng([seed, 2]), the
    plan the k of them with the largest epoch-1 losses (ties by id), every weight 1."""
    n, k, m = 40, 10, 20
    p = make_policy("orderdp", num_samples=n, seed=3, prune_ratio=0.75, pool=2.0)
    assert len(p.plan) == n  # epoch 1 is full
    loss = ((np.arange(n) * 7) % 11).astype(np.float32)
    p.observe(np.zeros(n, np.int64), np.arange(n, dtype=np.int64), loss)
    plan = p.finish_epoch()
    u = np.random.default_rng([3, 2]).random(n)
    pool = np.argsort(u, kind="stable")[:m]
    expected = sorted(sorted(pool.tolist(), key=lambda i: (-loss[i], i))[:k])
    assert plan.ids.tolist() == expected and plan.weights.tolist() == [1.0] * k
    assert p.history[-1] == {"size": k, "pool_size": m}


def test_orderdp_uses_stale_losses_and_meets_a_budget_exactly():
    p = make_policy("orderdp", num_samples=500, seed=0, target_pruned=0.5, num_epochs=6)
    for _ in range(5):
        run_epoch(p)
    assert p.plan_sizes[0] == 500 and sum(p.plan_sizes) == pytest.approx(0.5 * 6 * 500, abs=6)
    assert p.budget_status()["reached"]


def test_orderdp_plans_are_the_same_on_any_number_of_shards():
    def plans(shards):
        p = make_policy("orderdp", num_samples=777, seed=5, prune_ratio=0.6, pool=1.5, shards=shards)
        return [run_epoch(p, rng=np.random.default_rng(e)).ids.tolist() for e in range(3)]
    assert plans(1) == plans(3) == plans(7)


def test_orderdp_parameters_are_checked():
    with pytest.raises(ValueError, match="pool must be"):
        make_policy("orderdp", num_samples=10, pool=0.5)


def test_random_star_can_train_the_first_epoch_on_all_the_data():
    base = make_policy("random", num_samples=100, seed=0, prune_ratio=0.5)
    full = make_policy("random", num_samples=100, seed=0, prune_ratio=0.5, full_first_epoch=True)
    assert len(base.plan) == 50 and len(full.plan) == 100
    # from epoch 2 on both draw from the same stream: the same subsets
    assert run_epoch(base).ids.tolist() == run_epoch(full).ids.tolist()
    budgeted = make_policy("random", num_samples=100, seed=0, target_pruned=0.5, num_epochs=4, full_first_epoch=True)
    for _ in range(3):
        run_epoch(budgeted)
    assert budgeted.plan_sizes == [100, 33, 34, 33]  # epoch 1 counts at n against the budget


def test_a_knob_and_a_budget_together_are_one_line():
    from repb_ray.core import policy_class
    with pytest.raises(ValueError, match=r"policy_args.rho=0.3 and target_pruned=0.5 are both set"):
        policy_class("repb").run_params({"rho": 0.3}, epochs=4, target_pruned=0.5)
