"""The epoch order of the data plane: a pure function of (seed, epoch), different every epoch, so a
sample's position in one epoch says nothing about its position in the next, and rules with one
threshold per epoch (InfoBatch) prune independently of where a sample sits."""

import threading
import time

import numpy as np
import pytest
import ray

from repb_ray.data import from_numpy, read_parquet
from repb_ray.data.prepare import prepare_arrays
from repb_ray.train import Pruning, PruningSession

pytestmark = [pytest.mark.ray]


def _run(policy, params, n=4096, epochs=4, seed=0, shuffle_rows=256, source=None, score=None, batch_size=64):
    """Drive the real pipeline and session as one rank; returns the id order of every epoch."""
    ds = source if source is not None else from_numpy({"x": np.zeros((n, 2), np.float32)}, block_rows=128)
    pruning = Pruning(policy, params, num_samples=n, num_workers=1, seed=seed, shuffle_rows=shuffle_rows)
    try:
        session = PruningSession(pruning.handle, rank=0, world_size=1)
        session.start(None)
        pipeline = pruning.dataset(ds)
        orders = []
        for epoch in range(1, epochs + 1):
            session.begin_epoch(epoch)
            seen, done = [], 0
            for batch in session.batches(pipeline, batch_size):
                ids = batch["id"].numpy()
                pos = np.arange(done, done + len(ids))
                done += len(ids)
                s = score(ids, pos, epoch) if score else np.ones(len(ids), np.float32)
                session.observe(batch["id"], s)
                seen.append(ids)
            orders.append(np.concatenate(seen))
            session.end_epoch()
        return orders
    finally:
        pruning.shutdown()


def _positions(order, n):
    pos = np.full(n, -1, np.int64)
    pos[order] = np.arange(order.size)
    return pos


def test_block_and_row_orders_are_independent_across_epochs():
    """The order functions themselves (no Ray): a block's slot and a row's place in its block in
    epoch e say nothing about e+1 (200 epochs, 64 blocks)."""
    from repb_ray.data.plan_index import PlanIndex, block_order
    idx = [PlanIndex("g", e, 3, 0, *(np.zeros(0, np.int64),) * 2, ()) for e in range(1, 201)]
    slots = np.array([np.argsort(block_order(i.seed, i.epoch, 64)) for i in idx], float)  # slot of each block, per epoch
    rows = np.array([np.argsort(i.row_order(0, 64)) for i in idx], float)
    for a in (slots, rows):
        r = np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]
        assert abs(r) < 0.03, r  # 12,736 pairs: the sampling error of r is 0.009


def test_positions_in_consecutive_epochs_are_uncorrelated(ray_session):
    """Through the pipeline: 256 blocks of 16 rows. Rows of one block share its slot, so one pair of
    epochs gives r within about 1/sqrt(256) = 0.06 of 0; the mean of four pairs within 0.03."""
    n = 4096
    ds = from_numpy({"x": np.zeros((n, 2), np.float32)}, block_rows=16)
    orders = _run("full", {}, n=n, epochs=5, source=ds)
    rs = []
    for a, b in zip(orders, orders[1:]):
        assert sorted(a.tolist()) == list(range(n))  # every sample once
        rs.append(np.corrcoef(_positions(a, n), _positions(b, n))[0, 1])
    assert max(abs(r) for r in rs) < 0.25 and abs(np.mean(rs)) < 0.12, rs
    assert abs(np.corrcoef(_positions(orders[0], n), np.arange(n))[0, 1]) < 0.25  # not storage order


def test_the_order_is_a_pure_function_of_seed_and_epoch(ray_session):
    a = _run("repb", {"rho": 0.5}, n=2048, epochs=3, score=lambda ids, pos, e: (ids % 7).astype(np.float32))
    b = _run("repb", {"rho": 0.5}, n=2048, epochs=3, score=lambda ids, pos, e: (ids % 7).astype(np.float32))
    c = _run("repb", {"rho": 0.5}, n=2048, epochs=3, seed=1, score=lambda ids, pos, e: (ids % 7).astype(np.float32))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def _falling(rng, n):
    return lambda ids, pos, e: (1.0 - pos / n + 0.1 * rng.random(len(ids))).astype(np.float32)


def _prune_counts(orders, n):
    pruned = np.zeros(n)
    for o in orders[1:]:
        pruned += 1
        pruned[o] -= 1
    return pruned / (len(orders) - 1)


def test_infobatch_prunes_independently_of_where_a_sample_is_stored(ray_session):
    """Scores fall through every epoch (late samples look well learned, as losses do in training),
    and InfoBatch thresholds them once per epoch. Served in a fixed order (the control below, the
    policy alone), the samples stored late are late every epoch and pruned most; with a new order
    every epoch, how often a sample is pruned does not depend on where it is stored."""
    from repb_ray.core import make_policy
    n, epochs = 4096, 7
    ds = from_numpy({"x": np.zeros((n, 2), np.float32)}, block_rows=16)
    rate = _prune_counts(_run("infobatch", {"prune_ratio": 0.7, "num_epochs": 20}, n=n, epochs=epochs, source=ds,
                              score=_falling(np.random.default_rng(0), n)), n)
    assert 0.15 < rate.mean() < 0.6                                 # real pruning happens
    assert abs(np.corrcoef(np.arange(n), rate)[0, 1]) < 0.15        # ... not by storage position
    assert abs(rate[-n // 5:].mean() - rate[: n // 5].mean()) < 0.06
    # the control: the same rule and scores, served in storage order every epoch
    p, rng, orders = make_policy("infobatch", num_samples=n, prune_ratio=0.7, num_epochs=20), np.random.default_rng(0), []
    for _ in range(epochs):
        ids = p.plan.ids
        orders.append(ids)
        p.observe(0, ids, _falling(rng, n)(ids, np.arange(ids.size), 0))
        p.finish_epoch()
    fixed = _prune_counts(orders, n)
    assert np.corrcoef(np.arange(n), fixed)[0, 1] > 0.5 and fixed[-n // 5:].mean() - fixed[: n // 5].mean() > 0.3


def test_parquet_shards_are_read_in_a_new_order_each_epoch_and_only_where_needed(ray_session, tmp_path):
    n = 3000
    prepare_arrays({"x": np.arange(n, dtype=np.float32)}, str(tmp_path / "p"), rows_per_file=250)
    orders = _run("random", {"prune_ratio": 0.5}, n=n, epochs=3, source=read_parquet(str(tmp_path / "p")))
    assert [o.size for o in orders] == [1500, 1500, 1500]
    firsts = [o[0] // 250 for o in orders]  # the file of the first row served
    assert len(set(tuple(o[:50] // 250) for o in orders)) == 3 and len(set(firsts)) >= 2


@pytest.mark.parametrize("kind", ["arrays", "parquet", "filter"])
def test_many_plan_chunks_serve_exactly_the_plan_and_its_weights(ray_session, tmp_path, kind):
    """Plans published as 16 chunks of 64 ids, files of 50 rows straddling them, read tasks sharing
    processes (and their chunk cache): every epoch serves each plan id once with its own weight."""
    n = 1000
    x = np.arange(n, dtype=np.float32)[:, None]
    if kind == "arrays":
        ds = from_numpy({"x": x}, block_rows=50)
    elif kind == "parquet":
        prepare_arrays({"x": x}, str(tmp_path / "pq"), rows_per_file=50)
        ds = read_parquet(str(tmp_path / "pq"))
    else:  # any Ray dataset with an id column: pruned by the filter UDF
        ds = ray.data.from_items([{"id": i, "x": float(i)} for i in range(n)], override_num_blocks=20)
    pruning = Pruning("repb", {"rho": 0.6, "window": 2}, num_samples=n, num_workers=1, chunk=64, shuffle_rows=0)
    try:
        session = PruningSession(pruning.handle, rank=0, world_size=1)
        session.start(None)
        pipeline = pruning.dataset(ds)
        for epoch in range(1, 5):
            session.begin_epoch(epoch)
            plan_ids, plan_w = ray.get(pruning.coordinator.plan_arrays.remote())
            ids, weights = [], []
            for batch in session.batches(pipeline, 32):
                ids.append(batch["id"].numpy().copy())
                weights.append(batch["weight"].numpy().copy())
                assert np.array_equal(batch["x"].numpy().reshape(-1), batch["id"].numpy())  # rows stay whole
                session.observe(batch["id"], (batch["id"] % 13).float())
            ids, weights = np.concatenate(ids), np.concatenate(weights)
            order = np.argsort(ids)
            np.testing.assert_array_equal(ids[order], plan_ids, err_msg=f"ids of epoch {epoch}")
            np.testing.assert_array_equal(weights[order], plan_w, err_msg=f"weights of epoch {epoch}")
            session.end_epoch()
        assert len(set(plan_w.tolist())) > 1 and len(plan_ids) < n  # real pruning, CTR weights that differ
    finally:
        pruning.shutdown()


@pytest.mark.parametrize("kind", ["arrays", "parquet", "filter"])
def test_the_next_epochs_reads_start_before_its_plan_and_serve_exactly_it(ray_session, tmp_path, kind):
    """`then` starts epoch 2's iteration once epoch 1's data has sent its last block: its reads run and wait
    in the coordinator while epoch 1's last batches are observed, nothing of epoch 2 is served before its
    plan is decided, and then epoch 2 is the same batches as when it starts after its plan."""
    n = 2048
    if kind == "arrays":
        ds = from_numpy({"x": np.zeros((n, 2), np.float32)}, block_rows=128)
    elif kind == "parquet":
        prepare_arrays({"x": np.zeros(n, np.float32)}, str(tmp_path / "pq"), rows_per_file=128)
        ds = read_parquet(str(tmp_path / "pq"))
    else:
        ds = ray.data.from_items([{"id": i, "x": 0.0} for i in range(n)], override_num_blocks=16)
    score = lambda ids, pos, e: (ids % 13).astype(np.float32)  # noqa: E731
    reference = _run("repb", {"rho": 0.6}, n=n, epochs=2, source=ds, score=score)
    pruning = Pruning("repb", {"rho": 0.6}, num_samples=n, num_workers=1, shuffle_rows=256)
    try:
        session = PruningSession(pruning.handle, rank=0, world_size=1)
        session.start(None)
        pipeline = pruning.dataset(ds)
        session.begin_epoch(1)
        served, threads = [], []

        def then():
            def take():
                served.extend(b["id"].numpy().copy() for b in session.batches(pipeline, 64, epoch=2))
            threads.append(threading.Thread(target=take, daemon=True))
            threads[0].start()
        for batch in session.batches(pipeline, 64, then=then):
            session.observe(batch["id"], score(batch["id"].numpy(), None, 1))
        assert threads, "then() did not run at the end of epoch 1's data"
        deadline = time.monotonic() + 60
        while ray.get(pruning.coordinator.read_waits.remote()) == 0:
            assert time.monotonic() < deadline, "epoch 2's reads never waited for its plan"
            time.sleep(0.05)
        assert served == []  # epoch 1 is not finished: no plan, no row
        session.end_epoch()   # epoch 1's last observations: the plan of epoch 2 is decided, its reads go on
        threads[0].join(timeout=120)
        assert not threads[0].is_alive()
        np.testing.assert_array_equal(np.concatenate(served), reference[1])
    finally:
        pruning.shutdown()


def test_broken_id_columns_stop_at_the_first_read_not_after_an_epoch(ray_session, tmp_path):
    """int32 ids are refused from the footers; ids that repeat inside a file (its row count still
    matching its min..max) stop the first read task that meets them, naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from repb_ray.errors import DataError
    (tmp_path / "i32").mkdir()
    pq.write_table(pa.table({"id": pa.array(np.arange(8), pa.int32()), "x": np.zeros(8)}), tmp_path / "i32" / "a.parquet")
    with pytest.raises(DataError, match="the id column has type int32; ids must be int64"):
        read_parquet(str(tmp_path / "i32"))
    (tmp_path / "dup").mkdir()
    pq.write_table(pa.table({"id": np.array([0, 1, 1, 3], np.int64), "x": np.zeros(4)}), tmp_path / "dup" / "a.parquet")
    ds = read_parquet(str(tmp_path / "dup"))  # the footer's min, max and count look right
    pruning = Pruning("full", {}, num_samples=4, num_workers=1)
    try:
        session = PruningSession(pruning.handle, rank=0, world_size=1)
        session.start(None)
        session.begin_epoch(1)
        with pytest.raises(Exception, match=r"a\.parquet: its 4 ids are not 0\.\.3 once each"):
            list(session.batches(pruning.dataset(ds), 4))
    finally:
        pruning.shutdown()


def test_a_folder_name_is_a_name_not_a_pattern(tmp_path):
    from repb_ray.data.sources import parquet_files
    prepare_arrays({"x": np.zeros(4, np.float32)}, str(tmp_path / "set[1]"), rows_per_file=2)
    prepare_arrays({"x": np.zeros(6, np.float32)}, str(tmp_path / "set1"), rows_per_file=2)
    files = parquet_files(str(tmp_path / "set[1]"))
    assert len(files) == 2 and all("set[1]" in f for f in files)


def test_a_sources_schema_is_known_without_a_read_and_is_the_reads(ray_session, tmp_path):
    """The schema MLflow's dataset record holds comes from the Parquet footer or the table, as a read gives it."""
    from repb_ray.data.sources import id_block_source
    arrays = {"x": np.zeros((300, 2), np.float32), "y": np.arange(300)}
    prepare_arrays(arrays, str(tmp_path / "pq"), rows_per_file=100)
    for ds in (from_numpy(arrays, block_rows=128), read_parquet(str(tmp_path / "pq"))):
        known, read = id_block_source(ds).schema(), ds.schema()
        assert known.names == read.names and [str(t) for t in known.types] == [str(t) for t in read.types]
        assert known.names[-2:] == ["weight", "epoch"] and {"id", "x", "y"} <= set(known.names)
