"""The coordinator's protocol on real actors, driven by lightweight "ranks" from the test process:
waits never starve observations (100 ranks), late and duplicate chunks, K shards vs one, and
state saved by every shard and restored."""

import os

import numpy as np
import pytest
import ray

from repb_ray.core import make_policy
from repb_ray.train import coordinator as co
from repb_ray.train.messages import EpochDone, Observations

pytestmark = [pytest.mark.ray]


def _scores(ids, epoch):
    return (np.sin(ids * 0.37 + epoch) ** 2).astype(np.float32)


def _send_epoch(front, routing, epoch, plan_ids, world, batch=8, steps=None, finish=True):
    """Each of `world` ranks sends its share (rank::world of the plan, `batch` ids per step; only the
    steps in `steps` when given), one chunk per step, to the owning shard(s), then finishes (unless not
    `finish`); returns the refs."""
    gen, bounds = routing.generation, np.array([b for _, b in routing.bounds[:-1]], np.int64)
    targets = routing.targets
    refs = []
    for rank in range(world):
        mine = plan_ids[rank::world]
        seq = [0] * len(targets)
        for step, s in enumerate(range(0, mine.size, batch)):
            if steps is not None and step not in steps:
                continue
            ids = mine[s:s + batch]
            owner = np.searchsorted(bounds, ids, side="right")
            for j in np.unique(owner):
                sel = ids[owner == j]
                refs.append(targets[j].observe.remote(Observations(gen, epoch, rank, int(j), seq[j],
                                                                   np.array([step], np.int64),
                                                                   np.array([sel.size], np.int64), sel,
                                                                   _scores(sel, epoch))))
                seq[j] += 1
        if finish:
            refs += [t.finish.remote(EpochDone(gen, epoch, rank, j, seq[j])) for j, t in enumerate(targets)]
    return refs


def _plan_ids(front):
    ids, _ = ray.get(front.plan_arrays.remote())
    return ids


def test_a_hundred_ranks_waiting_never_starve_observations(ray_session):
    world, n = 100, 4000
    front = co.create("repb", n, 0, world, {"rho": 0.5, "window": 1})
    try:
        ray.get(front.reset.remote(None, world))
        routing = ray.get(front.routing.remote())
        waits = [front.wait_plan.remote(routing.generation, 2, 60.0) for _ in range(world)]  # all ranks wait first
        ray.get(_send_epoch(front, routing, 1, _plan_ids(front), world))
        infos = ray.get(waits, timeout=60)
        assert {i.epoch for i in infos} == {2} and len({i.digest for i in infos}) == 1
        # the plan is the one a plain policy decides from the same observations
        p = make_policy("repb", num_samples=n, seed=0, world_size=world, rho=0.5, window=1)
        for rank in range(world):
            mine = p.plan.ids[rank::world]
            for step, s in enumerate(range(0, mine.size, 8)):
                p.observe(step, mine[s:s + 8], _scores(mine[s:s + 8], 1))
        assert p.finish_epoch().digest == infos[0].digest
    finally:
        ray.kill(front)


def test_finish_waits_for_a_late_chunk_and_ignores_a_duplicate(ray_session):
    n = 64
    front = co.create("full", n, 0, 1, {})
    try:
        ray.get(front.reset.remote(None, 1))
        gen = ray.get(front.routing.remote()).generation
        ids = np.arange(n, dtype=np.int64)
        one = np.ones(32, np.float32)

        def chunk(seq, step, part):
            return Observations(gen, 1, 0, 0, seq, np.array([step]), np.array([32]), part, one)
        ray.get(front.observe.remote(chunk(0, 0, ids[:32])))
        ray.get(front.observe.remote(chunk(0, 0, ids[:32])))  # duplicate seq
        ray.get(front.finish.remote(EpochDone(gen, 1, 0, 0, 2)))  # says 2 chunks; chunk 1 has not arrived yet
        with pytest.raises(ray.exceptions.RayTaskError, match=r"epoch 1 not finished after 2s: ranks \[0\]"):
            ray.get(front.wait_plan.remote(gen, 2, 2.0))
        ray.get(front.observe.remote(chunk(1, 1, ids[32:])))
        assert ray.get(front.wait_plan.remote(gen, 2, 10.0)).kept == n
    finally:
        ray.kill(front)


def test_decision_errors_reach_the_waiting_ranks(ray_session):
    front = co.create("repb", 16, 0, 1, {})
    try:
        ray.get(front.reset.remote(None, 1))
        gen = ray.get(front.routing.remote()).generation
        ids = np.arange(15, dtype=np.int64)  # one id never observed
        ray.get(front.observe.remote(Observations(gen, 1, 0, 0, 0, np.array([0]), np.array([15]), ids,
                                                  np.ones(15, np.float32))))
        ray.get(front.finish.remote(EpochDone(gen, 1, 0, 0, 1)))
        with pytest.raises(ray.exceptions.RayTaskError, match=r"1 of the 16 samples .* never observed"):
            ray.get(front.wait_plan.remote(gen, 2, 10.0))
    finally:
        ray.kill(front)


@pytest.mark.parametrize("policy,params", [("repb", {"rho": 0.5, "window": 2}),
                                           ("random", {"prune_ratio": 0.4}),
                                           ("infobatch", {"prune_ratio": 0.5, "num_epochs": 5})])
def test_three_shard_actors_give_the_single_coordinators_plans_and_restore(ray_session, tmp_path, policy, params):
    n, world = 3001, 2
    fronts = {k: co.create(policy, n, 7, world, params, shards=k, state_root=str(tmp_path)) for k in (1, 3)}
    try:
        digests = {}
        for k, front in fronts.items():
            ray.get(front.reset.remote(None, world))
            routing = ray.get(front.routing.remote())
            assert len(routing.targets) == k and len(ray.get(front.shard_handles.remote())) == (k if k > 1 else 0)
            out = []
            for e in (1, 2, 3):
                ray.get(_send_epoch(front, routing, e, _plan_ids(front), world))
                out.append(ray.get(front.wait_plan.remote(routing.generation, e + 1, 60)).digest)
                if e == 2:
                    assert ray.get(front.save.remote(f"k{k}")) == f"k{k}"
            digests[k] = out
        assert digests[1] == digests[3]
        files = sorted(os.listdir(tmp_path / "k3"))
        assert files == ["global.npz", "shard_000.npz", "shard_001.npz", "shard_002.npz"]
        # a restarted coordinator restores every shard from its file and decides epoch 4 the same way
        again = co.create(policy, n, 7, world, params, shards=3, state_root=str(tmp_path))
        try:
            info = ray.get(again.reset.remote("k3", world))
            assert info.epoch == 3 and info.digest == digests[3][1]
            routing = ray.get(again.routing.remote())
            ray.get(_send_epoch(again, routing, 3, _plan_ids(again), world))
            assert ray.get(again.wait_plan.remote(routing.generation, 4, 60)).digest == digests[3][2]
        finally:
            ray.kill(again)
        with pytest.raises(ray.exceptions.RayTaskError, match="resume with the same number of shards"):
            ray.get(fronts[1].reset.remote("k3", world))
    finally:
        for f in fronts.values():
            ray.kill(f)


def test_a_second_fresh_reset_starts_over(ray_session):
    """A worker group restarted before its first checkpoint resets the coordinator afresh: the
    shards must not keep the failed attempt's counts (CTR weights would be off)."""
    front = co.create("repb", 500, 0, 1, {"rho": 0.9}, shards=2)
    try:
        first = ray.get(front.reset.remote(None, 1))
        routing = ray.get(front.routing.remote())
        ray.get(_send_epoch(front, routing, 1, _plan_ids(front), 1))
        ray.get(front.wait_plan.remote(routing.generation, 2, 30))
        again = ray.get(front.reset.remote(None, 1))
        assert again.epoch == 1 and again.digest == first.digest
        routing = ray.get(front.routing.remote())
        ray.get(_send_epoch(front, routing, 1, _plan_ids(front), 1))
        ray.get(front.wait_plan.remote(routing.generation, 2, 30))
        ray.get(_send_epoch(front, routing, 2, _plan_ids(front), 1))
        info = ray.get(front.wait_plan.remote(routing.generation, 3, 30))
        assert info.weight_max <= 2.0  # E=2 over N_i >= 1: no sample counted twice in epoch 1
        p = make_policy("repb", num_samples=500, seed=0, rho=0.9)
        for e in (1, 2):
            ids = p.plan.ids
            for step, s in enumerate(range(0, ids.size, 8)):
                p.observe(step, ids[s:s + 8], _scores(ids[s:s + 8], e))
            p.finish_epoch()
        assert p.plan.digest == info.digest and float(p.plan.weights.mean()) == pytest.approx(info.weight_mean)
    finally:
        ray.kill(front)


def test_a_state_saved_within_an_epoch_holds_its_first_steps(ray_session, tmp_path):
    """Saved after the first steps' observations, restored, the rest sent: the plan of the uninterrupted
    epoch. Old states go as Ray Train's checkpoints do: the last epoch-end ones and the newest after them."""
    from repb_ray.layout import state_name
    assert sorted([state_name(2), state_name(1, 4, 1), state_name(1, 4), state_name(1), state_name(1, 12)]) == \
        [state_name(1), state_name(1, 4), state_name(1, 12), state_name(1, 4, 1), state_name(2)]
    front = co.create("repb", 500, 0, 2, {"rho": 0.9, "window": 2}, shards=2, state_root=str(tmp_path))
    try:
        ray.get(front.reset.remote(None, 2))
        routing = ray.get(front.routing.remote())
        plan = _plan_ids(front)
        ray.get(_send_epoch(front, routing, 1, plan, 2))
        clean = ray.get(front.wait_plan.remote(routing.generation, 2, 30))
        ray.get(front.reset.remote(None, 2))
        routing = ray.get(front.routing.remote())
        ray.get(_send_epoch(front, routing, 1, plan, 2, steps=range(0, 10), finish=False))
        for name in (state_name(0, 2), state_name(0, 4), state_name(0, 10)):  # every 2 steps, then a notice
            ray.get(front.save.remote(name))
        ray.get(front.reset.remote(state_name(0, 10), 2))
        routing = ray.get(front.routing.remote())
        ray.get(_send_epoch(front, routing, 1, plan, 2, steps=range(10, 99)))
        assert ray.get(front.wait_plan.remote(routing.generation, 2, 30)).digest == clean.digest
        for e in (1, 2, 3, 4):
            ray.get(front.save.remote(state_name(e)))
        ray.get(front.save.remote(state_name(4, 6)))
        assert sorted(os.listdir(tmp_path)) == [state_name(2), state_name(3), state_name(4), state_name(4, 6)]
    finally:
        ray.kill(front)


def test_a_failure_is_repeated_when_two_attempts_in_a_row_end_alike():
    """The first error each worker group recorded (the cause, not the other ranks' broken collectives);
    two in a row alike: the one line the driver raises."""
    c = co.Coordinator("repb", 100, 0, 1, {})
    assert c.repeated_failure() is None
    c.record_failure("g1", 2, 3, "RuntimeError: boom")
    c.record_failure("g1", 2, 3, "DistBackendError: connection closed")  # a later rank of the same group
    assert c.repeated_failure() is None
    c.record_failure("g2", 2, 4, "RuntimeError: boom")  # another step: retried
    assert c.repeated_failure() is None
    c.record_failure("g3", 2, 4, "RuntimeError: boom")
    assert c.repeated_failure() == ("failed twice at epoch 2, step 4 with the same error (RuntimeError: boom); not "
                                    "retried again: fix the cause, then continue the run with --resume")


def test_plan_chunks_grow_with_the_dataset_within_bounds():
    from repb_ray.train.coordinator import plan_chunk_size
    assert plan_chunk_size(60_000) == 1 << 16 and plan_chunk_size(1 << 24) == 1 << 16   # 256 chunks
    assert plan_chunk_size((1 << 24) + 1) == 1 << 17
    assert plan_chunk_size(100_000_000) == 1 << 19 and plan_chunk_size(10**9) == 1 << 19  # capped: 2 MiB
