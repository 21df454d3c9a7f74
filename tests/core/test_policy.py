"""Policy contract: determinism, exact resume, exact ids, and errors that name the value and the fix."""

import numpy as np
import pytest
from helpers import run_epoch

from repb_ray.core import EpochPlan, make_policy
from repb_ray.storage import load_npz, save_npz

pytestmark = pytest.mark.unit  # in-process, seconds

POLICIES = [("repb", {"rho": 0.5, "window": 2}), ("repb", {"rho": 0.9, "lwp": False, "ctr_max": 2.0}),
            ("infobatch", {"prune_ratio": 0.5, "num_epochs": 6, "delta": 0.6}),
            ("random", {"prune_ratio": 0.3}), ("full", {})]


def _through_file(state: dict, path: str) -> dict:
    """A state dict written and read back as the coordinator stores it (arrays + JSON, no pickle)."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    save_npz(path, arrays, {k: v for k, v in state.items() if k not in arrays})
    arrays, meta = load_npz(path)
    return {**meta, **arrays}


def _scores(ids):
    return np.sin(ids * 0.37).astype(np.float32) + 1.0  # a pure function of the id


@pytest.mark.parametrize("name,params", POLICIES)
def test_plans_do_not_depend_on_observe_order_or_chunking(name, params):
    a = make_policy(name, num_samples=3000, seed=11, **params)
    b = make_policy(name, num_samples=3000, seed=11, **params)
    for e in range(5):
        # same (step, id, score) triples, delivered shuffled and in different chunk sizes
        pa = run_epoch(a, _scores, rng=np.random.default_rng(e), chunk=7)
        plan = b.plan
        ids = np.random.default_rng(e).permutation(plan.ids)
        steps = (np.arange(ids.size) // 64).astype(np.int64)
        order = np.random.default_rng(100 + e).permutation(ids.size)
        for s in range(0, ids.size, 501):
            o = order[s:s + 501]
            b.observe(steps[o], ids[o], _scores(ids[o]))
        pb = b.finish_epoch()
        assert pa.digest == pb.digest and np.array_equal(pa.weights, pb.weights)


@pytest.mark.parametrize("name,params", POLICIES)
def test_state_dict_round_trip_continues_exactly_at_every_epoch(name, params, tmp_path):
    ref = make_policy(name, num_samples=2000, seed=5, world_size=2, **params)
    ref_plans = [ref.plan.digest] + [run_epoch(ref, _scores, world_size=2).digest for _ in range(5)]
    for stop in range(5):
        p = make_policy(name, num_samples=2000, seed=5, world_size=2, **params)
        for _ in range(stop):
            run_epoch(p, _scores, world_size=2)
        # also stop in the middle of an epoch, with observations pending
        ids = np.random.default_rng(p.epoch).permutation(p.plan.ids)
        half = ids[: ids.size // 2]
        steps = (np.arange(ids.size) // 64).astype(np.int64)
        p.observe(steps[: half.size], half, _scores(half))
        q = make_policy(name, num_samples=2000, seed=5, world_size=2, **params)
        q.load_state_dict(_through_file(p.state_dict(), str(tmp_path / "s.npz")))
        rest = ids[ids.size // 2:]
        q.observe(steps[half.size:], rest, _scores(rest))
        plans = [q.finish_epoch(world_size=2).digest]
        while len(plans) + stop < 5:
            plans.append(run_epoch(q, _scores, world_size=2).digest)
        assert plans == ref_plans[stop + 1:], f"diverged after resuming at epoch {stop + 1}"
        np.testing.assert_array_equal(q.counts, ref.counts) if stop == 4 else None


def test_load_state_dict_rejects_other_policy_or_params():
    p = make_policy("repb", num_samples=100, seed=0, rho=0.5)
    with pytest.raises(ValueError, match="rho"):
        make_policy("repb", num_samples=100, seed=0, rho=0.6).load_state_dict(p.state_dict())
    with pytest.raises(ValueError, match="policy"):
        make_policy("full", num_samples=100, seed=0).load_state_dict(p.state_dict())


def test_ids_beyond_2_pow_24_are_exact():
    n = 2**24 + 40
    big = np.array([2**24 + 1, 2**24 + 2, 2**24 + 39], dtype=np.int64)  # float32 cannot tell 2**24+1 from +2
    q = make_policy("repb", num_samples=n, seed=0, rho=1.0, window=1)
    ids = q.plan.ids
    scores = np.zeros(n, np.float32)
    scores[big] = 1.0  # only these are above the window mean
    q.observe(np.zeros(n, np.int64), ids, scores)
    plan = q.finish_epoch()
    np.testing.assert_array_equal(plan.ids, big)
    assert plan.weights_for(big).tolist() == [1.0, 1.0, 1.0]


BAD = [
    (dict(name="repb", rho=1.5), ValueError, r"rho must be in \[0, 1\], got rho=1.5"),
    (dict(name="repb", rho=-0.1), ValueError, r"rho=-0.1"),
    (dict(name="repb", rho=float("nan")), ValueError, "rho"),
    (dict(name="repb", rho="0.5"), TypeError, "rho must be a number"),
    (dict(name="repb", window=0), ValueError, r"window must be >= 1, got window=0"),
    (dict(name="repb", window=1.5), TypeError, "window must be an integer"),
    (dict(name="repb", num_samples=0), ValueError, r"num_samples must be >= 1, got num_samples=0"),
    (dict(name="repb", seed=-1), ValueError, "seed"),
    (dict(name="repbb"), ValueError, r"unknown policy 'repbb' \(did you mean 'repb'\?\)"),
    (dict(name="repb", rh=0.5), TypeError, r"unknown parameter 'rh' for policy 'repb' \(did you mean 'rho'\?\)"),
    (dict(name="infobatch"), TypeError, "needs num_epochs="),
    (dict(name="infobatch", num_epochs=5, prune_ratio=1.0), ValueError, r"prune_ratio must be in \[0, 1\)"),
    (dict(name="random", prune_ratio=0.9999), ValueError, "keeps no sample"),
    (dict(name="repb", world_size=200), ValueError, "world_size=200 is larger than num_samples=100"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_arguments_raise_with_value_and_fix(kwargs, exc, msg):
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    kwargs.setdefault("num_samples", 100)
    with pytest.raises(exc, match=msg):
        make_policy(name, **kwargs)


def _obs(n=4):
    return np.zeros(n, np.int64), np.arange(n, dtype=np.int64), np.ones(n, np.float32)


@pytest.mark.parametrize("mutate,exc,msg", [
    (lambda s, i, c: (s, i, c.astype(np.float64)), TypeError, r"scores must have dtype float32.*astype"),
    (lambda s, i, c: (s, i.astype(np.int32), c), TypeError, r"ids must have dtype int64"),
    (lambda s, i, c: (s, i.tolist(), c), TypeError, r"ids must be a numpy array"),
    (lambda s, i, c: (s, i.reshape(2, 2), c), ValueError, r"ids must be 1-D, got ids.shape=\(2, 2\)"),
    (lambda s, i, c: (s[:3], i, c), ValueError, "same length, got 3, 4, 4"),
])
def test_observe_rejects_wrong_dtypes_and_shapes(mutate, exc, msg):
    p = make_policy("repb", num_samples=4)
    with pytest.raises(exc, match=msg):
        p.observe(*mutate(*_obs()))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(bad):
    p = make_policy("repb", num_samples=4)
    s, i, c = _obs()
    c[2] = bad
    p.observe(s, i, c)
    with pytest.raises(ValueError, match=r"scores must be finite, got score .* for id 2"):
        p.finish_epoch()


def test_finish_epoch_checks_each_plan_sample_observed_exactly_once():
    p = make_policy("repb", num_samples=6)
    s, i, c = _obs(5)
    p.observe(s, i, c)
    with pytest.raises(ValueError, match=r"1 of the 6 samples .* never observed \(first ids: \[5\]\)"):
        p.finish_epoch()
    p.observe(s[:1], i[:1], c[:1])
    with pytest.raises(ValueError, match="id 0 was observed 2 times"):
        p.finish_epoch()
    q = make_policy("random", num_samples=10, seed=0, prune_ratio=0.5)
    outside = np.setdiff1d(np.arange(10), q.plan.ids)[:1]
    q.observe(np.zeros(1, np.int64), outside, np.ones(1, np.float32))
    with pytest.raises(ValueError, match=f"id {outside[0]} was observed in epoch 1 but is not in"):
        q.finish_epoch()
    r = make_policy("full", num_samples=3)
    r.observe(np.zeros(1, np.int64), np.array([7], np.int64), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"observed id 7 is outside \[0, 3\)"):
        r.finish_epoch()


def test_epoch_plan_helpers():
    plan = EpochPlan(3, np.array([1, 4, 9], np.int64), np.array([1, 2, 3], np.float32))
    assert plan.weights_for(np.array([9, 1])).tolist() == [3.0, 1.0]
    with pytest.raises(KeyError, match="id 5 is not in the plan of epoch 3"):
        plan.weights_for(np.array([5]))
    chunks = plan.chunks(10, chunk=4)                 # ids [0, 4), [4, 8), [8, 10)
    assert [(c.lo, c.hi, c.kept) for c in chunks] == [(0, 4, 1), (4, 8, 1), (8, 10, 1)]
    keep, w = chunks[2].lookup(np.array([8, 9, 9], np.int64))
    assert keep.tolist() == [False, True, True] and w.tolist() == [3.0, 3.0]
    assert chunks[0].bits.nbytes == 1                  # one bit per id, not a float per id
    assert len(plan.digest) == 64
