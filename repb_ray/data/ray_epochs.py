"""Ray Data serving of pruned epochs: a base dataset with an `id` column, filtered to the current plan."""

from __future__ import annotations

import numpy as np
import ray

from repb_ray.data.arrays import ArraySplit

_PLAN_CACHE: dict = {}  # per process: coordinator generation -> (epoch, dense weights)


def base_dataset(split: ArraySplit, *, seed: int, rows_per_block: int = 2048) -> "ray.data.Dataset":
    """Materialised dataset {id, x, y} whose rows are in a seeded random order (blocks mix classes)."""
    from ray.data.block import BlockAccessor
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(split)).astype(np.int64)
    tables = []
    for start in range(0, order.shape[0], rows_per_block):
        rows = np.sort(order[start:start + rows_per_block])
        tables.append(BlockAccessor.batch_to_block({"id": rows, "x": split.x[rows], "y": split.y[rows]}))
    return ray.data.from_arrow(tables)


def _dense_plan(coordinator) -> tuple[str, int, np.ndarray]:
    generation, epoch, ref = ray.get(coordinator.current.remote())
    cached = _PLAN_CACHE.get(generation)
    if cached is None or cached[0] != epoch:
        if len(_PLAN_CACHE) > 8:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[generation] = cached = (epoch, ray.get(ref))
    return generation, cached[0], cached[1]


def filter_to_plan(batch: dict, coordinator, seed: int) -> dict:
    """Ray Data UDF (one block per call): keep the rows of the current plan, add their `weight` and
    the plan's `epoch`, and shuffle the block with a generator seeded by (seed, epoch, first id)."""
    _, epoch, dense = _dense_plan(coordinator)
    ids = batch["id"]
    w = dense[ids]
    keep = np.flatnonzero(~np.isnan(w))
    if keep.size and ids.size:
        keep = np.random.default_rng([seed, epoch, int(ids[0])]).permutation(keep)
    out = {k: v[keep] for k, v in batch.items()}
    out["weight"] = w[keep]
    out["epoch"] = np.full(keep.shape[0], epoch, dtype=np.int64)
    return out


def epoch_pipeline(base, coordinator, *, seed: int):
    """One pipeline for the whole run; each pass over it serves the epoch the coordinator publishes."""
    return base.map_batches(filter_to_plan, batch_size=None, batch_format="numpy",
                            fn_kwargs={"coordinator": coordinator, "seed": seed})
