"""The epoch pipeline: a train dataset bound to the coordinator's plan (pruned at the read for id-block
sources, by a filter on the id column otherwise), then the task's preprocess on the kept rows only.
Built in the driver; the functions here run in Ray Data tasks."""

from __future__ import annotations

import numpy as np

from repb_ray import _ray_compat
from repb_ray.data.plan_index import LOOKUP, plan_for, read_epoch
from repb_ray.data.sources import RESERVED, id_block_source, read_blocks
from repb_ray.errors import DataError


def filter_to_plan(batch, source):
    """Ray Data UDF for datasets without id-block structure: keep the rows of the plan of the epoch being
    served (waited for if it is not decided yet; only the id column is looked at), add `weight` and
    `epoch`, shuffle the kept rows by (seed, epoch, first id of the block)."""
    import pyarrow as pa
    index = plan_for(source, read_epoch(source))
    ids = batch.column("id").to_numpy()
    keep, weight = LOOKUP.keep_and_weights(index, ids)
    rows = np.flatnonzero(keep)
    if rows.size:
        order = index.row_order(int(ids[0]), rows.size)
        rows, weight = rows[order], weight[order]
    out = batch.take(rows)
    out = out.append_column("weight", pa.array(weight, pa.float32()))
    return out.append_column("epoch", pa.array(np.full(rows.size, index.epoch, np.int64)))


def apply_preprocess(batch: dict, task_ref, hook: str = "preprocess") -> dict:
    """Ray Data UDF: the task's preprocess (or eval_preprocess) on a numpy batch; the columns
    repb_ray needs (id, weight, epoch) pass through untouched."""
    task = task_ref.load()
    keep = {k: batch[k] for k in ("id",) + RESERVED if k in batch}
    out = getattr(task, hook)(batch)
    if not isinstance(out, dict):
        raise DataError(f"task {task_ref.path!r}: {hook}(batch) returned {type(out).__name__}; return the batch dict")
    n = len(batch["id"]) if "id" in batch else None
    for k, v in out.items():
        if n is not None and len(v) != n:
            raise DataError(f"task {task_ref.path!r}: {hook}(batch) returned {len(v)} rows in column {k!r} for {n} "
                            "input rows; preprocess must keep one row per input row (pruning decides the rows)")
    for k, v in keep.items():
        out.setdefault(k, v)
    return out


def pruned_dataset(ds, source, task_ref=None):
    """The train pipeline of a run: `ds` bound to the coordinator `source`, then preprocess. A read of
    an id-block source is re-read through a copy of the source bound to the plans (pruned at the
    read); any other dataset is filtered by its id column."""
    blocks = id_block_source(ds)
    if blocks is not None:  # (id-block sources checked their columns when they were built)
        ds = read_blocks(blocks.bound_to(source))
    else:
        schema = ds.schema()
        names = schema.names if schema is not None else []
        if "id" not in names:
            raise DataError(f"the train dataset has no 'id' column (columns: {', '.join(names) or 'none'}); every row "
                            "needs an int64 id, 0..n-1")
        clash = [c for c in RESERVED if c in names]
        if clash:
            raise DataError(f"the train dataset has the column(s) {', '.join(clash)}, which repb_ray adds; rename them")
        ds = ds.map_batches(filter_to_plan, fn_kwargs={"source": source}, batch_format="pyarrow", batch_size=None)
    ds = _ray_compat.own_context_copy(ds)  # its own DataContext: options set here stay with this pipeline
    ds.context.execution_options.preserve_order = True  # the same order on every run (local mode too)
    if task_ref is not None and _overrides(task_ref, "preprocess"):  # one call per block: blocks stay as they are
        ds = ds.map_batches(apply_preprocess, fn_kwargs={"task_ref": task_ref}, batch_format="numpy", batch_size=None)
    return ds


def eval_dataset(ds, task_ref=None):
    """The test pipeline: the task's eval_preprocess (default: preprocess) on every row."""
    if ds is None:
        return None
    if task_ref is not None and (_overrides(task_ref, "eval_preprocess") or _overrides(task_ref, "preprocess")):
        ds = ds.map_batches(apply_preprocess, fn_kwargs={"task_ref": task_ref, "hook": "eval_preprocess"},
                            batch_format="numpy")
    return ds


def _overrides(task_ref, hook: str) -> bool:
    from repb_ray.task import Task
    return getattr(type(task_ref.load()), hook) is not getattr(Task, hook)


def check_ids(ds, num_samples: int | None = None) -> int:
    """Stream the id column once (the driver holds one bit per sample, no rows): the ids must be
    int64, 0..n-1, each once. Returns n. For datasets not built by repb_ray's readers."""
    seen = None
    count = 0
    for batch in ds.select_columns(["id"]).iter_batches(batch_format="numpy", batch_size=65536):
        ids = batch["id"]
        if ids.dtype != np.int64:
            raise DataError(f"the train dataset's id column has dtype {ids.dtype}; it must be int64")
        if ids.size and ids.min() < 0:
            raise DataError(f"the train dataset has a negative id ({int(ids.min())}); ids must be 0..n-1")
        top = int(ids.max()) + 1 if ids.size else 0
        if seen is None or top > seen.shape[0]:
            grown = np.zeros(max(top, 2 * (0 if seen is None else seen.shape[0])), bool)
            if seen is not None:
                grown[: seen.shape[0]] = seen
            seen = grown
        if seen[ids].any() or np.unique(ids).size != ids.size:
            dup = ids[seen[ids]][0] if seen[ids].any() else ids[np.argmax(np.bincount(ids) > 1)]
            raise DataError(f"the train dataset's id {int(dup)} appears more than once; ids must be unique")
        seen[ids] = True
        count += ids.size
    n = count
    if n == 0:
        raise DataError("the train dataset is empty")
    if seen.shape[0] < n or not seen[:n].all():
        missing = np.flatnonzero(~seen[:n])[:5].tolist() if seen.shape[0] >= n else [n - 1]
        raise DataError(f"the train dataset's {n} ids are not 0..{n - 1} (missing e.g. {missing}); ids must be dense")
    return n
