"""Files written atomically under unique temporary names (concurrent writers never share one), fsynced,
on local paths and pyarrow URIs; npz state without pickles."""

import os
import threading

import numpy as np
import pytest

from repb_ray import storage

pytestmark = pytest.mark.unit  # in-process, seconds


def test_concurrent_writers_of_one_file_leave_one_whole_version(tmp_path):
    path = str(tmp_path / "state.json")
    errors = []

    def write(k):
        try:
            for _ in range(50):
                storage.write_json(path, {"writer": k, "payload": "x" * 10_000})
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert storage.read_json(path)["payload"] == "x" * 10_000
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "a.bin")
    storage.write_bytes(path, b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert open(path, "rb").read() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_uri_storage_round_trip_and_removal(tmp_path):
    root = f"file://{tmp_path}/store"
    storage.save_npz(storage.join(root, "run", "s.npz"), {"a": np.arange(3)}, {"epoch": 2})
    arrays, meta = storage.load_npz(storage.join(root, "run", "s.npz"))
    assert arrays["a"].tolist() == [0, 1, 2] and meta == {"epoch": 2}
    assert storage.exists(storage.join(root, "run")) and storage.list_dirs(root) == ["run"]
    storage.remove_tree(storage.join(root, "run"))
    assert not storage.exists(storage.join(root, "run"))


def test_npz_state_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array("{}"), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        storage.load_npz(str(path))


@pytest.mark.slow
def test_an_endpoint_override_uri_keeps_its_query_and_gets_one_object_per_file(s3):
    """pyarrow's own form for S3-compatible stores: names join onto the path, the query stays, and every
    file is its own object (not all of them the one object `bucket/prefix`)."""
    root = s3.uri("query-form", "team/runs")
    assert storage.join(root, "a", "b.json") == ("s3://query-form/team/runs/a/b.json?"
                                                 + root.split("?", 1)[1])
    storage.write_json(storage.join(root, "a", "repb_run.json"), {"n": 1})
    storage.save_npz(storage.join(root, "a", "coordinator", "s.npz"), {"x": np.arange(2)}, {"epoch": 1})
    storage.write_json(storage.join(root, "b", "repb_run.json"), {"n": 2})
    assert s3.keys("query-form") == ["team/runs/a/coordinator/s.npz", "team/runs/a/repb_run.json",
                                     "team/runs/b/repb_run.json"]
    assert storage.read_json(storage.join(root, "b", "repb_run.json")) == {"n": 2}
    assert storage.list_dirs(root) == ["a", "b"]
    assert storage.create_exclusive(storage.join(root, "a", "claim"), b"1")
    assert not storage.create_exclusive(storage.join(root, "a", "claim"), b"2")
    assert storage.read_bytes(storage.join(root, "a", "claim")) == b"1"
    storage.remove(storage.join(root, "a"))
    assert storage.list_dirs(root) == ["b"] and storage.list_entries(storage.join(root, "missing")) == {}


def test_a_listing_that_fails_raises_instead_of_reading_as_empty(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        storage.list_entries(str(tmp_path / "file"))
    assert storage.list_entries(str(tmp_path / "missing")) == {}
    with pytest.raises(OSError):
        storage.list_dirs(f"file://{tmp_path}/file")


def test_credentials_in_a_storage_uri_are_refused_with_the_fix():
    from repb_ray.errors import StorageError
    with pytest.raises(StorageError, match=r"credentials in its URI \(s3://\*\*\*@...\).*AWS_ACCESS_KEY_ID"):
        storage.check_location("s3://AKIA:se@cret@bucket/runs")
    assert storage.check_location("~/runs") == os.path.expanduser("~/runs")


def test_stores_without_an_exclusive_create_say_so():
    from repb_ray.errors import StorageError
    with pytest.raises(StorageError, match=r"cannot take a run's ownership on hdfs:// storage"):
        storage.create_exclusive("hdfs://namenode:8020/runs/r1/_owner/g000001.json", b"{}")


def test_file_uris_keep_their_host_port_and_query():
    """read_parquet lists a folder URI and names each file as a URI of the same store: an HDFS namenode's
    host and port, and an S3-compatible endpoint's query, stay on every file."""
    assert storage.uri_of("hdfs://nn:8020/data/train?user=x", "/data/train/part-0.parquet") == \
        "hdfs://nn:8020/data/train/part-0.parquet?user=x"
    assert storage.uri_of("s3://bkt/data?endpoint_override=minio:9000", "bkt/data/part-0.parquet") == \
        "s3://bkt/data/part-0.parquet?endpoint_override=minio:9000"


def test_written_files_have_the_modes_of_ordinary_files(tmp_path):
    """A teammate's driver on a shared volume reads a run's record and its owner's heartbeat: files get
    the mode the umask gives any file (not a temporary file's 0600)."""
    path = tmp_path / "repb_run.json"
    storage.write_json(str(path), {"a": 1})
    assert (path.stat().st_mode & 0o777) == 0o666 & ~storage._umask()
