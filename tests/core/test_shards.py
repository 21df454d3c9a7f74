"""Sharding by id range: every policy's plans with K shards equal the single policy's, bit for bit."""

import numpy as np
import pytest
from helpers import run_epoch

from repb_ray.core import make_policy

pytestmark = pytest.mark.unit  # in-process, seconds

CASES = [
    ("repb", dict(rho=0.5, window=2)),
    ("repb", dict(rho=0.7, window=1, ctr_max=3.0)),
    ("repb", dict(rho=0.6, lwp=False)),
    ("repb", dict(rho=0.5, resample=False, ctr=False)),
    ("repb", dict(target_pruned=0.4, num_epochs=6)),
    ("infobatch", dict(prune_ratio=0.5, num_epochs=6, delta=0.7)),
    ("infobatch", dict(prune_ratio=0.4, num_epochs=6, anneal=False)),
    ("infobatch", dict(target_pruned=0.3, num_epochs=6)),
    ("random", dict(prune_ratio=0.3)),
    ("random", dict(target_pruned=0.5, num_epochs=6)),
    ("full", {}),
    ("egreedy", dict(prune_ratio=0.5, epsilon=0.2)),
    ("egreedy", dict(prune_ratio=0.4, select_every=2)),
    ("ucb", dict(prune_ratio=0.5, ucb_c=0.5)),
    ("ucb", dict(target_pruned=0.5, num_epochs=6)),
    ("orderdp", dict(prune_ratio=0.5, pool=1.5)),
    ("orderdp", dict(target_pruned=0.5, num_epochs=6)),
    ("random", dict(prune_ratio=0.3, full_first_epoch=True)),
]
N = 1999


def _scores(ids, e):
    """ids arrive in training order; every fifth block of 32 (whole windows) scores 0.25 throughout,
    so those windows' means equal their scores and need the exact path."""
    s = (np.sin(ids * 0.37 + e) ** 2).astype(np.float32)
    s[(np.arange(ids.size) // 32) % 5 == 0] = 0.25
    return s


def _run(name, params, shards=None, bounds=None, world_size=2, epochs=5):
    kw = {"bounds": bounds} if bounds else {"shards": shards or 1}
    p = make_policy(name, num_samples=N, seed=3, world_size=world_size, **kw, **params)
    plans = [(p.plan.ids.copy(), p.plan.weights.copy())]
    for e in range(epochs):
        plan = run_epoch(p, lambda ids, e=e: _scores(ids, e), batch=16, rng=np.random.default_rng(e), world_size=world_size)
        plans.append((plan.ids.copy(), plan.weights.copy()))
    return p, plans


@pytest.mark.parametrize("name,params", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_plans_with_k_shards_equal_the_single_policy(name, params):
    _, ref = _run(name, params)
    for kw in (dict(shards=2), dict(shards=3), dict(shards=8), dict(bounds=[(0, 7), (7, 1500), (1500, N)])):
        p, got = _run(name, params, **kw)
        assert len(p.shards) == (len(kw["bounds"]) if "bounds" in kw else kw["shards"])
        for e, ((ia, wa), (ib, wb)) in enumerate(zip(ref, got)):
            np.testing.assert_array_equal(ia, ib, err_msg=f"{kw}: ids of epoch {e + 1}")
            np.testing.assert_array_equal(wa, wb, err_msg=f"{kw}: weights of epoch {e + 1}")


@pytest.mark.parametrize("name,params", CASES[:2] + CASES[5:6] + CASES[11:12])
def test_state_moves_between_shard_counts(name, params):
    """A state saved with K shards is the same arrays as with one, and loads into any other K."""
    p3, _ = _run(name, params, shards=3, epochs=2)
    p1, _ = _run(name, params, shards=1, epochs=2)
    s3, s1 = p3.state_dict(), p1.state_dict()
    assert s3.keys() == s1.keys()
    for k in s1:
        if isinstance(s1[k], np.ndarray):
            np.testing.assert_array_equal(s1[k], s3[k], err_msg=k)
    q = make_policy(name, num_samples=N, seed=3, world_size=2, shards=5, **params)
    q.load_state_dict(s3)
    a = run_epoch(q, lambda ids: _scores(ids, 9), batch=16, rng=np.random.default_rng(9), world_size=2)
    b = run_epoch(p1, lambda ids: _scores(ids, 9), batch=16, rng=np.random.default_rng(9), world_size=2)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert q.digest() == p1.digest() == a.digest


def test_observations_routed_to_the_wrong_shard_are_named():
    p = make_policy("repb", num_samples=100, seed=0)
    shard = p.shards[0]
    q = make_policy("repb", num_samples=100, seed=0, shards=2)
    q.shards[0].observe(0, np.array([70], np.int64), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"id 70 was sent to the shard of ids \[0, 50\)"):
        q.finish_epoch()
    assert shard.span == 100


def test_bad_shard_arguments():
    with pytest.raises(ValueError, match="shards=5 is larger than num_samples=4"):
        make_policy("repb", num_samples=4, shards=5)
    with pytest.raises(ValueError, match="contiguous ranges covering"):
        make_policy("repb", num_samples=10, bounds=[(0, 4), (5, 10)])


@pytest.mark.parametrize("name,params", [CASES[0], CASES[5], CASES[11]], ids=["repb", "infobatch", "egreedy"])
def test_retrim_to_a_new_world_size_is_exact_and_sharding_free(name, params):
    """Resuming on another number of workers: the current plan loses size % world_size samples, drawn
    from default_rng([seed, epoch, 1]); they count as untrained; the same with any K; then the run goes on."""
    runs = []
    for kw in (dict(shards=1), dict(shards=3)):
        p, _ = _run(name, params, world_size=1, epochs=2, **kw)
        before_ids, before_counts = p.plan.ids.copy(), p.counts.copy()
        k = len(before_ids)
        ws = 7 if k % 7 else 9
        assert k % ws, "the case must need a re-trim"
        plan = p.retrim(ws)
        assert len(plan) == k - k % ws and len(plan) % ws == 0 and p.plan_sizes[-1] == len(plan)
        gone = np.setdiff1d(before_ids, plan.ids)
        pos = np.sort(np.random.default_rng([3, p.epoch, 1]).choice(k, size=k % ws, replace=False))
        np.testing.assert_array_equal(gone, before_ids[pos])
        np.testing.assert_array_equal(p.counts[gone], before_counts[gone] - 1)
        nxt = run_epoch(p, lambda ids: _scores(ids, 9), batch=16, rng=np.random.default_rng(9), world_size=ws)
        assert len(nxt) % ws == 0
        runs.append((plan.ids, plan.weights, nxt.ids, nxt.weights))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
