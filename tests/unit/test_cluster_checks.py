"""Checks for a shared cluster that need no cluster: a folder some node cannot see is refused, SQLite on
a network volume with concurrent trials is refused, a tracking server that does not answer is one
line within seconds."""

import time

import pytest

from repb_ray.config import Config
from repb_ray.errors import ConfigError
from repb_ray.tracking.mlflow_tracking import LockedClient, check_reachable, client
from repb_ray.train.ray_env import unseen_paths

pytestmark = pytest.mark.unit  # in-process, seconds


def test_a_folder_a_node_cannot_see_is_named_and_no_marker_stays(tmp_path):
    nodes = [{"NodeID": "a", "NodeManagerAddress": "10.0.0.1"}, {"NodeID": "b", "NodeManagerAddress": "10.0.0.2"}]
    seen = lambda nodes, marker: [n["NodeID"] == "a" for n in nodes]  # node b has its own disk
    missing = unseen_paths([str(tmp_path / "out")], nodes, seen)
    assert missing == [(str(tmp_path / "out"), nodes[1])]
    assert list((tmp_path / "out").iterdir()) == []
    assert unseen_paths([str(tmp_path / "out")], nodes, lambda nodes, m: [True, True]) == []


def test_a_sqlite_store_has_one_writer_at_a_time_wherever_it_is_used(tmp_path):
    """Every call of a SQLite store's client (a train job's, a sweep trial's) holds an exclusive lock beside
    the database: a second writer waits (on a network volume too, where SQLite's own locking fails)."""
    import fcntl
    import threading
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = client(uri)
    assert isinstance(c, LockedClient)
    holder = open(str(tmp_path / "mlflow.db.lock"), "a")
    fcntl.flock(holder, fcntl.LOCK_EX)  # another writer holds the store
    done = threading.Event()
    threading.Thread(target=lambda: (c.search_experiments(), done.set()), daemon=True).start()
    assert not done.wait(1.0)  # waits for it
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    assert done.wait(30)


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


def test_resources_no_node_can_give_are_one_line_before_anything_starts():
    from repb_ray.config import Config
    from repb_ray.errors import ConfigError
    from repb_ray.train.ray_env import check_resources
    nodes = [{"Resources": {"memory": 8 * 2**30, "trainer": 1}}, {"Resources": {"memory": 4 * 2**30}}]
    with pytest.raises(ConfigError, match=r"coordinator_shards=8 is more than the 4 training samples; use at most 4"):
        check_resources(Config(coordinator_shards=8), 4, nodes)
    with pytest.raises(ConfigError, match=r"needs 298.1 GiB of memory per shard for 10000000000 samples with "
                                           r"coordinator_shards=1, and the largest node offers 8.0 GiB; set "
                                           r"coordinator_shards=38 or more"):
        check_resources(Config(), 10**10, nodes)
    check_resources(Config(coordinator_shards=40), 10**10, nodes)  # spread over enough shards: fine
    check_resources(Config(worker_resources={"trainer": 1}), 100, nodes)
    with pytest.raises(ConfigError, match=r"worker_resources asks gpu_a100=1 per worker and no node offers that much"):
        check_resources(Config(worker_resources={"gpu_a100": 1}), 100, nodes)


def test_training_data_local_to_one_node_is_named_before_any_read(tmp_path):
    """Parquet files on a path the other nodes do not see: one line naming the folder and the node; one
    file per folder is probed, nothing written."""
    from repb_ray.errors import ConfigError
    from repb_ray.train.ray_env import check_files_visible
    files = [f"{tmp_path}/data/part-{i:05d}.parquet" for i in range(3)] + [f"{tmp_path}/test/part-00000.parquet"]
    nodes = [{"NodeManagerAddress": "10.0.0.1"}, {"NodeManagerAddress": "10.0.0.2"}]
    asked = []

    def probe(ns, path):
        asked.append(path)
        return [True, "/test/" not in path]
    with pytest.raises(ConfigError, match=r"training data in .*/test is not visible from node 10.0.0.2"):
        check_files_visible(files, nodes, probe)
    assert asked == [files[0], files[3]] and list(tmp_path.iterdir()) == []
    check_files_visible(files, nodes[:1], probe)  # one node: nothing to check
