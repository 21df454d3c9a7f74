"""Files on local disk or any pyarrow filesystem URI (s3://, gs://, ...): atomic, fsynced writes under
unique temporary names, npz/JSON state without pickles, listing and removal. Used by the driver
(run identities), the coordinator's shards (their state files) and the tests; no Ray."""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid

import numpy as np


def is_uri(location: str) -> bool:
    return "://" in location


def filesystem(location: str):
    """(pyarrow filesystem or None for a local path, the path within it)."""
    if not is_uri(location):
        return None, location
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(location)


def join(location: str, *parts: str) -> str:
    return posixpath.join(location, *parts) if is_uri(location) else os.path.join(location, *parts)


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in directory `path` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(location: str, data: bytes) -> None:
    """Write `data` at `location` atomically: a reader sees the old file or the whole new one. Locally
    through a uniquely named temporary file in the same folder, fsynced, then renamed; on a URI in one
    object put."""
    fs, path = filesystem(location)
    if fs is None:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(folder)
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    if fs is None:
        with open(path, "rb") as fh:
            return fh.read()
    with fs.open_input_stream(path) as fh:
        return fh.read()


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    if fs is None:
        return os.path.exists(path)
    import pyarrow.fs
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_json(location: str, data) -> None:
    write_bytes(location, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(location: str):
    return json.loads(read_bytes(location).decode())


def save_npz(location: str, arrays: dict, meta: dict) -> None:
    """Arrays and a JSON-able mapping in one .npz (the meta as a JSON string, no pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
    write_bytes(location, buf.getvalue())


def load_npz(location: str) -> tuple[dict, dict]:
    """(arrays, meta) of a save_npz file; object arrays are refused (allow_pickle=False)."""
    with np.load(io.BytesIO(read_bytes(location)), allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    return arrays, meta


def remove_tree(location: str) -> None:
    fs, path = filesystem(location)
    if fs is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        fs.delete_dir(path)
    except OSError:
        pass


def list_dirs(location: str) -> list[str]:
    fs, path = filesystem(location)
    if fs is None:
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) if os.path.isdir(path) else []
    import pyarrow.fs
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    except OSError:
        return []
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pyarrow.fs.FileType.Directory)
