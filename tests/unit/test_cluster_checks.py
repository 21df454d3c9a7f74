"""Checks for a shared cluster that need no cluster: a folder some node cannot see is refused, SQLite on
a network volume with concurrent trials is refused, a tracking server that does not answer is one
line within seconds."""

import time

import pytest

from repb_ray.config import Config
from repb_ray.errors import ConfigError
from repb_ray.tracking.mlflow_tracking import check_concurrent_store, check_reachable, network_filesystem
from repb_ray.train.ray_env import unseen_paths


def test_a_folder_a_node_cannot_see_is_named_and_no_marker_stays(tmp_path):
    nodes = [{"NodeID": "a", "NodeManagerAddress": "10.0.0.1"}, {"NodeID": "b", "NodeManagerAddress": "10.0.0.2"}]
    seen = lambda nodes, marker: [n["NodeID"] == "a" for n in nodes]  # node b has its own disk
    missing = unseen_paths([str(tmp_path / "out")], nodes, seen)
    assert missing == [(str(tmp_path / "out"), nodes[1])]
    assert list((tmp_path / "out").iterdir()) == []
    assert unseen_paths([str(tmp_path / "out")], nodes, lambda nodes, m: [True, True]) == []


def test_sqlite_on_a_network_volume_with_concurrent_trials_is_refused(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n")
    assert network_filesystem("/mnt/shared/runs", str(mounts)) == "nfs4"
    assert network_filesystem("/home/me", str(mounts)) is None
    with pytest.raises(ConfigError, match=r"SQLite on a network volume \(nfs4\).*MLflow server"):
        check_concurrent_store("sqlite:////mnt/shared/runs/mlflow.db", 2, True, str(mounts))
    check_concurrent_store("sqlite:////mnt/shared/runs/mlflow.db", 1, True, str(mounts))   # one at a time: fine
    check_concurrent_store("sqlite:////home/me/mlflow.db", 4, True, str(mounts))           # local disk: fine
    check_concurrent_store("http://127.0.0.1:5000", 4, True, str(mounts))


def test_an_unreachable_tracking_server_is_one_line_within_seconds():
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        check_reachable("http://alice:Pw-Secret-9@127.0.0.1:9")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "is not reachable" in msg and "Pw-Secret-9" not in msg and "--tracking-uri none" in msg
    with pytest.raises(ConfigError, match="not usable"):
        check_reachable("sqlite:////no/such/folder/mlflow.db")
    assert Config(tracking_uri="none").tracking_uri == "none"
