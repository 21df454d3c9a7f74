"""Write a dataset as Parquet shards with a dense int64 id column (the form `read_parquet` serves
with pruning at the read): from arrays, or from any Ray dataset streamed through one process.
Runs in the driver or the `repb-ray prepare` command."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable

import numpy as np

MANIFEST = "_repb_prepared.json"


def _write_part(out_dir: str, part: int, lo: int, cols: dict) -> dict:
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor
    n = len(next(iter(cols.values())))
    table = BlockAccessor.batch_to_block({"id": np.arange(lo, lo + n, dtype=np.int64), **cols})
    name = f"part-{part:05d}.parquet"
    pq.write_table(table, os.path.join(out_dir, name), row_group_size=min(n, 2048))
    return {"file": name, "lo": lo, "hi": lo + n}


def write_shards(batches: Iterable[dict], out_dir: str, *, rows_per_file: int = 2048, source: str = "",
                 progress=None) -> dict:
    """Write numpy batches (dicts of equal-length columns, no `id`) as Parquet files of
    `rows_per_file` rows with ids 0, 1, ... in the order given; atomic (a temporary directory renamed
    at the end). Returns the manifest."""
    check_output_folder(out_dir, rows_per_file)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", suffix=".tmp")
    try:
        manifest = _write_into(tmp, batches, rows_per_file, source, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder this call made, nothing else
        raise
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    os.replace(tmp, out_dir)
    return manifest


def _write_into(tmp: str, batches, rows_per_file: int, source: str, progress) -> dict:
    files, pending, count, t0 = [], [], 0, time.monotonic()
    for batch in batches:
        if "id" in batch:
            batch = {k: v for k, v in batch.items() if k != "id"}
        pending.append(batch)
        while sum(len(next(iter(b.values()))) for b in pending) >= rows_per_file:
            cols = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            head = {k: v[:rows_per_file] for k, v in cols.items()}
            rest = {k: v[rows_per_file:] for k, v in cols.items()}
            files.append(_write_part(tmp, len(files), count, head))
            count += rows_per_file
            pending = [rest] if len(next(iter(rest.values()))) else []
            if progress:
                progress(count, time.monotonic() - t0)
    if pending and len(next(iter(pending[0].values()))):
        cols = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
        n = len(next(iter(cols.values())))
        if n:
            files.append(_write_part(tmp, len(files), count, cols))
            count += n
    manifest = {"num_samples": count, "files": files, "source": source, "rows_per_file": rows_per_file}
    with open(os.path.join(tmp, MANIFEST), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest


def check_output_folder(out_dir: str, rows_per_file: int) -> None:
    """Before anything is written: the folder must not exist or be empty, the file size positive."""
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        from repb_ray.errors import ConfigError
        raise ConfigError(f"rows_per_file must be an integer >= 1, got rows_per_file={rows_per_file!r}")
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise FileExistsError(f"{out_dir} already holds a prepared dataset; remove it to write it again")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; prepare into a new or empty folder")


def prepare_arrays(columns: dict, out_dir: str, **kwargs) -> dict:
    n = len(next(iter(columns.values())))
    step = kwargs.get("rows_per_file", 2048)
    return write_shards(({k: v[a:a + step] for k, v in columns.items()} for a in range(0, n, step)), out_dir, **kwargs)


def prepare_dataset(ds, out_dir: str, **kwargs) -> dict:
    """Any Ray dataset to Parquet shards with dense ids in the dataset's order (read with
    preserve_order; one process writes, holding one file's rows at a time)."""
    from ray.data import ExecutionOptions

    from repb_ray._ray_compat import own_context_copy
    ds = own_context_copy(ds)
    ds.context.execution_options = ExecutionOptions(preserve_order=True)
    return write_shards(ds.iter_batches(batch_format="numpy", batch_size=4096), out_dir, **kwargs)


def ensure_prepared(out_dir: str, make_columns, *, source: str, rows_per_file: int = 2048) -> str:
    """Prepare once: when `out_dir` has no manifest, write make_columns() there (under a file lock,
    so concurrent runs wait for the first). Returns out_dir."""
    import fcntl
    if not os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.makedirs(os.path.dirname(os.path.abspath(out_dir)) or ".", exist_ok=True)
        with open(out_dir.rstrip("/") + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(out_dir, MANIFEST)):
                prepare_arrays(make_columns(), out_dir, rows_per_file=rows_per_file, source=source)
    with open(os.path.join(out_dir, MANIFEST)) as fh:
        made_from = json.load(fh).get("source")
    if made_from != source:
        raise FileExistsError(f"{out_dir} holds data prepared from another source ({made_from!r}, not {source!r}); "
                              "point prepared_dir at a new folder (nothing is overwritten)")
    return out_dir
