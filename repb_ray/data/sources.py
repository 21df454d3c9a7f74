"""Train datasets whose blocks are known id ranges: arrays put in the object store (`from_numpy`)
or Parquet files with an int64 id column (`read_parquet`). Bound to a coordinator, each epoch reads
its blocks in an order that is a pure function of (seed, epoch): a read takes its block's bytes, then
waits for the epoch's plan (the execution may start before it is decided) and keeps only its members,
shuffled; a block without any yields nothing. Unbound, they serve every row in id order. Planning runs
in Ray Data's split coordinator; reading in Ray Data tasks."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from ray.data import Datasource, ReadTask

from repb_ray import storage
from repb_ray.data.plan_index import LOOKUP, ReadEpoch, block_order, plan_for, read_epoch
from repb_ray.errors import DataError

RESERVED = ("weight", "epoch")


@dataclass(frozen=True)
class IdBlock:
    """Rows with ids in [lo, hi): an object-store table (`ref`) or a Parquet file (`path`)."""

    lo: int
    hi: int
    rows: int
    nbytes: int | None = None
    ref: object = None
    path: str | None = None


def _metadata(block: IdBlock):
    from ray.data.block import BlockMetadata
    return BlockMetadata(num_rows=block.rows, size_bytes=block.nbytes,
                         input_files=[block.path] if block.path else None, exec_stats=None)


def _with_columns(table, weight: np.ndarray, epoch: int):
    import pyarrow as pa
    table = table.append_column("weight", pa.array(weight, pa.float32()))
    return table.append_column("epoch", pa.array(np.full(table.num_rows, epoch, np.int64)))


def _parquet_file(location: str, in_memory: bool = False):
    """The Parquet file at `location` (a path or URI); `in_memory`: a remote file's bytes are fetched whole
    first (one request, and nothing left to wait for on storage once a read has them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    fs, path = storage.filesystem(location)
    if fs is None:
        return pq.ParquetFile(path)
    if in_memory:
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(pa.BufferReader(fh.read_buffer()))
    return pq.ParquetFile(fs.open_input_file(path))


def _read_ids(block: IdBlock):
    """(the block's source, its ids): the object-store table, or the Parquet file with its bytes in hand."""
    if block.ref is not None:
        import ray
        table = ray.get(block.ref)
        return table, table.column("id").to_numpy()
    pf = _parquet_file(block.path, in_memory=True)
    return pf, pf.read(columns=["id"]).column("id").to_numpy()


def read_block(block: IdBlock, source=None, read: ReadEpoch | None = None) -> list:
    """One read task: the block's bytes and ids, then (bound to the coordinator `source`) the plan of `read`'s
    epoch, waited for if it is not decided yet: its members only, shuffled by (seed, epoch, block), with
    their `weight` and the plan's `epoch` (no block when it has none). Unbound: every row, in id order."""
    src, ids = _read_ids(block)
    _check_block_ids(block, ids)
    rows = np.flatnonzero(ids < block.hi) if ids.shape[0] != block.rows else None  # a file cut by `limit`
    if read is None:
        rows = np.arange(ids.shape[0]) if rows is None else rows
        weight, epoch = np.ones(rows.shape[0], np.float32), 0
    else:
        index = plan_for(source, read)
        keep, weight = LOOKUP.keep_and_weights(index, ids if rows is None else ids[rows])
        rows = np.flatnonzero(keep) if rows is None else rows[keep]
        if rows.shape[0] == 0:
            return []
        order = index.row_order(block.lo, rows.shape[0])
        rows, weight, epoch = rows[order], weight[order], index.epoch
    table = src if not hasattr(src, "read") else src.read()  # Parquet: the other columns only now
    return [_with_columns(table.take(rows), weight, epoch)]


def _check_block_ids(block: IdBlock, ids: np.ndarray) -> None:
    """The ids a block holds are int64 and its range, each once (checked on the id column, which every
    read takes anyway): a broken file stops the first epoch at its first read, not at its end."""
    where = block.path or f"the arrays' block of ids [{block.lo}, {block.hi})"
    if ids.dtype != np.int64:
        raise DataError(f"{where}: the id column has dtype {ids.dtype}; ids must be int64 (rewrite the file with "
                        "`repb-ray prepare`)")
    top = block.lo + ids.shape[0]  # a file cut by `limit` still holds its whole range
    local = ids - block.lo
    if ids.shape[0] and (local.min() < 0 or ids.max() >= top or np.bincount(local).max() > 1):
        raise DataError(f"{where}: its {ids.shape[0]} ids are not {block.lo}..{top - 1} once each (an id repeats or "
                        "falls outside); each file must hold one dense range of unique ids (write it with "
                        "`repb-ray prepare`)")


class IdBlockSource(Datasource):
    """A ray.data Datasource over IdBlocks covering ids [0, num_samples) (see the module docstring).
    Bound to a coordinator (`bound_to`), each read serves the coordinator's current plan."""

    def __init__(self, blocks: list[IdBlock], num_samples: int, name: str, plan_source=None):
        self.blocks, self.num_samples, self._name = blocks, num_samples, name
        self.plan_source = plan_source

    def bound_to(self, plan_source) -> IdBlockSource:
        """The same blocks, read through the plan that `plan_source` (the coordinator) publishes."""
        return IdBlockSource(self.blocks, self.num_samples, self._name, plan_source)

    def get_name(self) -> str:
        return self._name

    def schema(self):
        """The rows' pyarrow schema (the first block's columns, then weight and epoch), known without a read:
        a Parquet file's footer or the object-store table's own."""
        b = self.blocks[0]
        if b.ref is not None:
            import ray
            empty = ray.get(b.ref).slice(0, 0)
        else:
            empty = _parquet_file(b.path).schema_arrow.empty_table()
        return _with_columns(empty, np.zeros(0, np.float32), 0).schema

    def estimate_inmemory_data_size(self):
        sizes = [b.nbytes for b in self.blocks]
        return None if any(s is None for s in sizes) else int(sum(sizes))

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        # ray.data.read_datasource also calls this once when the dataset is built, without a
        # data_context, for its statistics: then (and unbound) every block, no plan asked for
        if self.plan_source is None or data_context is None:
            return [ReadTask(functools.partial(read_block, b), _metadata(b)) for b in self.blocks]
        read = read_epoch(self.plan_source)  # the epoch this execution serves; its plan may come later
        if read.num_samples != self.num_samples:
            raise DataError(f"the plan covers {read.num_samples} ids but this dataset has {self.num_samples}")
        return [ReadTask(functools.partial(read_block, self.blocks[j], self.plan_source, read), _metadata(self.blocks[j]))
                for j in block_order(read.seed, read.epoch, len(self.blocks))]


def read_blocks(source: IdBlockSource):
    """A dataset reading `source` as one task and one block per file (or array block): Ray Data's default
    would split each read's output into many small blocks to reach its target parallelism (~200), which
    keeps the read and the task's preprocess from fusing into one task and multiplies the tasks per epoch."""
    import ray.data
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.blocks)))


def id_block_source(ds) -> IdBlockSource | None:
    """The IdBlockSource `ds` reads, when `ds` is that read and nothing after it (then the pruning
    happens at the read); else None."""
    from repb_ray._ray_compat import read_source
    src = read_source(ds)
    return src if isinstance(src, IdBlockSource) else None


def _check_columns(names, what: str) -> None:
    if "id" not in names:
        raise DataError(f"{what} has no 'id' column (columns: {', '.join(names)}); every train row needs an int64 "
                        "id, 0..n-1 (repb_ray.data.from_numpy adds one; `repb-ray prepare` writes one)")
    clash = [c for c in RESERVED if c in names]
    if clash:
        raise DataError(f"{what} has the column(s) {', '.join(clash)}, which repb_ray adds itself; rename them")


def from_numpy(columns: dict, *, block_rows: int = 2048, name: str = "arrays"):
    """A Ray dataset over in-memory arrays (one row per index of the first axis), served in blocks of
    `block_rows` ids. An `id` column 0..n-1 is added when missing. For small data and tests: the
    arrays pass through the driver once into the object store."""
    import ray
    import ray.data
    from ray.data.block import BlockAccessor
    cols = {k: np.asarray(v) for k, v in columns.items()}
    lengths = {k: v.shape[0] for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"from_numpy needs columns of one length, got {lengths}")
    n = next(iter(lengths.values()))
    if "id" not in cols:
        cols = {"id": np.arange(n, dtype=np.int64), **cols}
    _check_columns(list(cols), "the arrays")
    ids = cols["id"]
    if ids.dtype != np.int64 or not np.array_equal(ids, np.arange(n)):
        raise DataError("from_numpy needs the id column to be int64 0..n-1 in order; leave it out to get one")
    blocks = []
    for lo in range(0, n, block_rows):
        hi = min(lo + block_rows, n)
        table = BlockAccessor.batch_to_block({k: v[lo:hi] for k, v in cols.items()})
        blocks.append(IdBlock(lo, hi, hi - lo, int(table.nbytes), ref=ray.put(table)))
    return read_blocks(IdBlockSource(blocks, n, name))


def parquet_files(path) -> list[str]:
    paths = [path] if isinstance(path, str) else list(path)
    out = []
    for p in paths:
        if "://" in p:
            try:
                out += storage.list_files(p, ".parquet")
            except FileNotFoundError:
                raise DataError(f"Parquet path {storage.display(p)!r} does not exist") from None
        elif os.path.isdir(p):  # walked, not globbed: a folder named set[1] is that folder
            out += sorted(os.path.join(d, f) for d, _, names in os.walk(p) for f in names if f.endswith(".parquet"))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise DataError(f"Parquet path {p!r} does not exist")
    if not out:
        raise DataError(f"no .parquet files under {path!r}")
    return out


def read_parquet(path, *, limit: int | None = None, name: str = "parquet"):
    """A Ray dataset over Parquet files with an int64 `id` column, each file holding one range of ids
    (as `repb-ray prepare` writes them). Only the footers are read here; the ids must cover 0..n-1
    once each (checked from the row-group statistics: min, max, count). `limit` keeps ids < limit."""
    blocks = []
    for f in parquet_files(path):
        meta = _parquet_file(f).metadata
        names = meta.schema.names
        _check_columns(names, f"Parquet file {f}")
        col = names.index("id")
        id_type = meta.schema.to_arrow_schema().field("id").type
        if str(id_type) != "int64":
            raise DataError(f"{f}: the id column has type {id_type}; ids must be int64 (rewrite the files with "
                            "`repb-ray prepare`)")
        lo, hi = None, None
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            if st is None or not st.has_min_max:
                raise DataError(f"{f}: the id column has no min/max statistics; rewrite it with pyarrow's defaults "
                                "or with `repb-ray prepare`")
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if meta.num_rows == 0:
            continue
        if hi - lo + 1 != meta.num_rows:
            raise DataError(f"{f}: {meta.num_rows} rows hold ids {lo}..{hi}; each file must hold one dense range of "
                            "unique ids (write the dataset with `repb-ray prepare`)")
        blocks.append(IdBlock(int(lo), int(hi) + 1, meta.num_rows, int(meta.serialized_size + sum(
            meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))), path=f))
    blocks.sort(key=lambda b: b.lo)
    n = sum(b.rows for b in blocks)
    for a, b in zip(blocks, blocks[1:]):
        if b.lo != a.hi:
            raise DataError(f"ids {a.hi}..{b.lo - 1} are missing or repeated between {a.path} and {b.path}; the ids "
                            f"must cover 0..n-1 exactly once")
    if not blocks or blocks[0].lo != 0:
        raise DataError(f"the ids in {path!r} must start at 0, got {blocks[0].lo if blocks else 'no rows'}")
    if limit is not None:
        blocks = [IdBlock(b.lo, min(b.hi, limit), min(b.hi, limit) - b.lo, b.nbytes, path=b.path)
                  for b in blocks if b.lo < limit]
        n = min(n, limit)
    return read_blocks(IdBlockSource(blocks, n, name))
