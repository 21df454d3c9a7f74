"""Files on local disk or any pyarrow filesystem URI (s3://, gs://, ...), in every process that touches
run state: atomic, fsynced writes under unique temporary names, an exclusive create (O_EXCL on a path,
a conditional put on S3), npz/JSON state without pickles, listing and removal. A URI's query
(`?endpoint_override=host:port&scheme=http`) stays with the URI: names are joined onto its path, so
every file is its own object. A listing or removal that fails raises (never "empty"). No Ray."""

from __future__ import annotations

import functools
import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from urllib.parse import parse_qs, urlsplit

import numpy as np

from repb_ray.errors import StorageError

OBJECT_STORES = ("s3", "gs", "gcs")  # schemes whose paths start with the bucket, and where a put is one object


def is_uri(location: str) -> bool:
    return "://" in location


def _split(location: str) -> tuple[str, str]:
    """(the URI without its query, the query) of a URI."""
    base, _, query = location.partition("?")
    return base, query


def check_location(location: str, what: str = "storage_path") -> str:
    """A storage location repb_ray can use: `~` expanded, no user:password in a URI (credentials come
    from the store's own chain: AWS_ACCESS_KEY_ID..., never the config). Raises with the fix."""
    if not isinstance(location, str) or not location:
        raise StorageError(f"{what} must be a path or a URI, got {what}={location!r}")
    if not is_uri(location):
        return os.path.expanduser(location)
    parts = urlsplit(location)
    if "@" in parts.netloc:
        raise StorageError(f"{what} carries credentials in its URI ({parts.scheme}://***@...); give them to the store's "
                           "own credential chain instead (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a "
                           "profile) and drop them from the URI")
    return location


@functools.lru_cache(maxsize=32)
def _filesystem_of(root: str):
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(root)[0]


def filesystem(location: str):
    """(pyarrow filesystem or None for a local path, the path within it). A URI's filesystem (its
    scheme, bucket and query) is built once per process."""
    if not is_uri(location):
        return None, location
    base, query = _split(location)
    parts = urlsplit(base)
    if parts.scheme in OBJECT_STORES:
        root = f"{parts.scheme}://{parts.netloc}" + (f"?{query}" if query else "")
        return _filesystem_of(root), (parts.netloc + parts.path).rstrip("/")
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(location)


def join(location: str, *parts: str) -> str:
    if not is_uri(location):
        return os.path.join(location, *parts)
    base, query = _split(location)
    return posixpath.join(base, *parts) + (f"?{query}" if query else "")


def uri_of(location: str, path: str) -> str:
    """The URI of `path` (a path within the filesystem of the URI `location`), with its query."""
    base, query = _split(location)
    parts = urlsplit(base)
    if parts.scheme in OBJECT_STORES:
        uri = f"{parts.scheme}://{path}"
    else:
        uri = f"{parts.scheme}://{parts.netloc}{path if path.startswith('/') else '/' + path}"
    return uri + (f"?{query}" if query else "")


def list_files(location: str, suffix: str = "") -> list[str]:
    """Every file under `location` (recursively) ending in `suffix`, as paths or URIs like `location`
    (a query kept), sorted. A listing that fails raises."""
    fs, path = filesystem(location)
    if fs is None:
        return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(suffix))
    import pyarrow.fs
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return sorted(uri_of(location, i.path) for i in infos
                  if i.type == pyarrow.fs.FileType.File and i.path.endswith(suffix))


def display(location: str) -> str:
    """The location as a person reads it (the query left out)."""
    return _split(location)[0] if is_uri(location) else location


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


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_bytes(location: str, data: bytes) -> None:
    """Write `data` at `location` atomically: a reader sees the old file or the whole new one. Locally
    through a uniquely named temporary file in the same folder, fsynced, then renamed; on a URI in one
    object put (object stores make a put atomic)."""
    fs, path = filesystem(location)
    if fs is None:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file (mkstemp's 0600 would hide it from the team)
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
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes takes bytes, got {type(data).__name__}")
    if _is_object_store(location):  # one put; no folder markers (an object store has prefixes, not folders)
        with fs.open_output_stream(path) as fh:
            fh.write(data)
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def _is_object_store(location: str) -> bool:
    return is_uri(location) and urlsplit(location).scheme in OBJECT_STORES


def create_exclusive(location: str, data: bytes) -> bool:
    """Create `location` holding `data` only if nothing is there: True if this call created it, False
    if it existed. On a path: O_EXCL (atomic on local disks and NFS); on S3: a conditional put
    (If-None-Match: *), through boto3. Other stores cannot do this through their pyarrow client:
    a StorageError names what to use instead."""
    if is_uri(location):
        scheme = urlsplit(location).scheme
        if scheme == "s3":
            return _s3_create_exclusive(location, data)
        if scheme == "file":
            return create_exclusive(filesystem(location)[1], data)
        raise StorageError(f"repb_ray cannot take a run's ownership on {scheme}:// storage (it needs an exclusive "
                           "create, and pyarrow's client offers none there); use s3:// (or an S3-compatible endpoint) "
                           "or a path every node mounts")
    os.makedirs(os.path.dirname(location) or ".", exist_ok=True)
    try:
        fd = os.open(location, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(os.path.dirname(location) or ".")
    return True


def _s3_client(location: str):
    """A boto3 client for the S3 store of `location` (its endpoint_override/scheme/region query, else
    boto3's own configuration: AWS_ENDPOINT_URL, profiles, the credential chain)."""
    try:
        import boto3
    except ImportError:
        raise StorageError("ownership of a run on s3:// needs boto3 (a conditional put): pip install boto3") from None
    query = parse_qs(_split(location)[1])
    kwargs = {}
    if "endpoint_override" in query:
        endpoint = query["endpoint_override"][0]
        scheme = query.get("scheme", ["https"])[0]
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
    if "region" in query:
        kwargs["region_name"] = query["region"][0]
    return boto3.client("s3", **kwargs)


def _s3_create_exclusive(location: str, data: bytes) -> bool:
    parts = urlsplit(_split(location)[0])
    client = _s3_client(location)
    try:
        client.put_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"), Body=data, IfNoneMatch="*")
    except Exception as exc:  # botocore's ClientError, without importing botocore at module level
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        if code in ("NotImplemented", "InvalidArgument"):
            raise StorageError(f"the S3 store of {display(location)} does not honour conditional writes "
                               "(If-None-Match: *), so repb_ray cannot guarantee one driver per run there; use a store "
                               "that does (AWS S3, MinIO, Ceph RGW, R2) or a path every node mounts") from None
        raise
    return True


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


def remove(location: str) -> None:
    """Remove one file or folder (recursively); gone already is fine, any other failure raises."""
    fs, path = filesystem(location)
    if fs is None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return
    import pyarrow.fs
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pyarrow.fs.FileType.File:
        fs.delete_file(path)


remove_tree = remove


def list_entries(location: str) -> dict[str, bool]:
    """{name: is_folder} of the entries directly in `location`; {} when it does not exist. A listing
    that fails (permissions, a 503, an expired token) raises: it is never read as "empty"."""
    fs, path = filesystem(location)
    if fs is None:
        if not os.path.exists(path):
            return {}
        return {e.name: e.is_dir(follow_symlinks=False) for e in os.scandir(path)}
    import pyarrow.fs
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return {posixpath.basename(i.path): i.type == pyarrow.fs.FileType.Directory for i in infos}


def list_dirs(location: str) -> list[str]:
    """The folders directly in `location`, sorted (raises when the listing fails)."""
    return sorted(name for name, is_dir in list_entries(location).items() if is_dir)
