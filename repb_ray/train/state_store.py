"""Coordinator state files on local disk or any pyarrow filesystem URI (s3://, gs://, ...): written
by each shard directly, so no single process carries the whole state. Runs in the actors."""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil

import numpy as np


def _fs(location: str):
    if "://" not in location:
        return None, location
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(location)


def join(location: str, *parts: str) -> str:
    return posixpath.join(location, *parts) if "://" in location else os.path.join(location, *parts)


def write_bytes(location: str, data: bytes) -> None:
    fs, path = _fs(location)
    if fs is None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def read_bytes(location: str) -> bytes:
    fs, path = _fs(location)
    if fs is None:
        with open(path, "rb") as fh:
            return fh.read()
    with fs.open_input_stream(path) as fh:
        return fh.read()


def save_npz(location: str, arrays: dict, meta: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
    write_bytes(location, buf.getvalue())


def load_npz(location: str) -> tuple[dict, dict]:
    with np.load(io.BytesIO(read_bytes(location)), allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    return arrays, meta


def remove_tree(location: str) -> None:
    fs, path = _fs(location)
    if fs is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        fs.delete_dir(path)
    except OSError:
        pass


def list_dirs(location: str) -> list[str]:
    fs, path = _fs(location)
    if fs is None:
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) if os.path.isdir(path) else []
    import pyarrow.fs
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    except OSError:
        return []
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pyarrow.fs.FileType.Directory)
