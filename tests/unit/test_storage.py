"""Files written atomically under unique temporary names (concurrent writers never share one), fsynced,
on local paths and pyarrow URIs; npz state without pickles."""

import os
import threading

import numpy as np
import pytest

from repb_ray import storage


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
