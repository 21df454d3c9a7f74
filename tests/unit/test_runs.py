"""A run touches only what it made: names checked, one driver per run (a lease), the identity beside the
outputs and beside the checkpoints (local or URI), cleanup that deletes only this invocation's files,
--overwrite that removes only the run's own files."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from repb_ray.config import Config
from repb_ray.errors import ConfigError, RunError
from repb_ray.train import runs
from repb_ray.train.lease import LEASE_FILE, Lease


def _cfg(out, **kw):
    return Config(task="synthetic", output_dir=str(out), name=kw.pop("name", "r1"), **kw)


def test_a_new_run_records_its_identity_in_both_folders_and_releases_its_lease(tmp_path):
    cfg = _cfg(tmp_path)
    claim = runs.claim(cfg)
    assert claim.state == "new" and os.path.exists(tmp_path / "r1" / LEASE_FILE)
    record = json.loads((tmp_path / "r1" / "run.json").read_text())
    stored = json.loads((tmp_path / "ray_results" / "r1" / "repb_run.json").read_text())
    assert record["fingerprint"] == stored["fingerprint"] == runs.fingerprint(cfg)
    claim.release()
    assert not os.path.exists(tmp_path / "r1" / LEASE_FILE)
    again = runs.claim(cfg)
    assert again.state == "resume"
    again.release()


def test_a_run_is_finished_only_once_it_recorded_so_with_this_config(tmp_path):
    """A restored sweep asks whether a trial's run already ended: only a finish recorded under the same
    config counts, and a claim (a run going again) withdraws it until that invocation finishes."""
    cfg = _cfg(tmp_path)
    claim = runs.claim(cfg)
    (tmp_path / "r1" / "summary.json").write_text(json.dumps({"per_epoch": [{"epoch": 1}]}))
    assert runs.finished_summary(cfg) is None  # the summary alone is not the end (tracking may be due)
    claim.finish()
    claim.release()
    assert runs.finished_summary(cfg) == {"per_epoch": [{"epoch": 1}]}
    assert runs.finished_summary(cfg.replace(epochs=cfg.epochs + 1)) is None
    again = runs.claim(cfg)
    assert runs.finished_summary(cfg) is None
    again.release()


def test_failure_before_the_first_checkpoint_removes_only_this_invocations_files(tmp_path):
    (tmp_path / "other-run").mkdir()
    (tmp_path / "other-run" / "summary.json").write_text("{}")
    (tmp_path / "mlflow.db").write_text("db")
    cfg = _cfg(tmp_path)
    claim = runs.claim(cfg)
    (tmp_path / "r1" / "summary.json").write_text("{}")   # written by this invocation
    claim.abandon()
    claim.release()
    assert not (tmp_path / "r1").exists() and not (tmp_path / "ray_results" / "r1").exists()
    assert (tmp_path / "other-run" / "summary.json").exists() and (tmp_path / "mlflow.db").exists()
    # a folder that was there before keeps whatever this invocation did not write
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "notes.txt").write_text("mine")
    (tmp_path / "r1" / "error.log").write_text("an earlier failure")
    claim = runs.claim(cfg)
    claim.abandon()
    claim.release()
    assert sorted(os.listdir(tmp_path / "r1")) == ["error.log", "notes.txt"]


def test_another_config_under_the_name_is_refused_from_the_checkpoints_side_too(tmp_path):
    """Outputs on one volume, checkpoints on another (a URI): the record beside the checkpoints decides."""
    store = f"file://{tmp_path}/bucket"
    first = _cfg(tmp_path / "head-a", storage_path=store)
    runs.claim(first).release()
    other = _cfg(tmp_path / "head-b", storage_path=store, epochs=first.epochs + 1)  # no run.json on this side
    with pytest.raises(ConfigError, match=r"was started with another config \(epochs: 15 -> 16\)"):
        runs.claim(other)
    claim = runs.claim(other, resume=True)
    assert claim.state == "resume"
    claim.release()
    # --overwrite clears the URI storage of this run, and only it
    (tmp_path / "bucket" / "keep-me").mkdir()
    (tmp_path / "bucket" / "r1" / "epoch_001").mkdir()
    claim = runs.claim(other, overwrite=True)
    assert claim.state == "new" and not (tmp_path / "bucket" / "r1" / "epoch_001").exists()
    assert (tmp_path / "bucket" / "keep-me").exists()
    claim.release()


def test_checkpoints_without_a_record_are_not_resumed_nor_deleted(tmp_path):
    (tmp_path / "ray_results" / "r1" / "epoch_003").mkdir(parents=True)
    for overwrite in (False, True):
        with pytest.raises(RunError, match="holds checkpoints but no repb_ray run record"):
            runs.claim(_cfg(tmp_path), overwrite=overwrite)
    assert (tmp_path / "ray_results" / "r1" / "epoch_003").exists()
    assert not (tmp_path / "r1").exists()  # nothing left behind by the refused claims


def test_overwrite_removes_the_runs_own_files_only(tmp_path):
    cfg = _cfg(tmp_path)
    runs.claim(cfg).release()
    (tmp_path / "r1" / "summary.json").write_text("{}")
    (tmp_path / "r1" / "my-notes.txt").write_text("keep")
    (tmp_path / "r1" / ".injected_worker_e2_s1_r0").write_text("")
    claim = runs.claim(cfg.replace(epochs=3), overwrite=True)
    assert sorted(os.listdir(tmp_path / "r1")) == [LEASE_FILE, "my-notes.txt", "run.json"]
    claim.release()


def test_a_sweep_folder_is_not_a_run(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "sweep.json").write_text("{}")
    with pytest.raises(ConfigError, match="is the folder of a sweep"):
        runs.claim(_cfg(tmp_path, name="s1"))


HOLD = """
import sys, time
from repb_ray.train.lease import Lease
lease = Lease(sys.argv[1], "r1").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_driver_of_a_live_run_is_refused_naming_the_holder(tmp_path):
    cfg = _cfg(tmp_path)
    os.makedirs(cfg.run_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, cfg.run_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as e:
            runs.claim(cfg)
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and "--set name=" in msg
        assert f"kill {holder.pid}" in msg and "\n" not in msg
        assert not (tmp_path / "ray_results" / "r1").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    claim = runs.claim(cfg)  # its holder is gone (same host, process ended): taken over
    claim.release()


def test_a_lease_from_another_host_is_taken_over_only_once_stale(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    lease_file = folder / LEASE_FILE
    lease_file.write_text(json.dumps({"token": "x", "host": "node-7", "pid": 1, "job": "raysubmit_abc"}))
    with pytest.raises(RunError, match=r"Ray job raysubmit_abc.*ray job stop raysubmit_abc"):
        Lease(str(folder), "r1").acquire()
    old = time.time() - 3600
    os.utime(lease_file, (old, old))  # no heartbeat for an hour
    lease = Lease(str(folder), "r1").acquire()
    assert json.loads(lease_file.read_text())["token"] == lease.token
    lease.release()


def test_a_waiting_driver_takes_a_lease_once_its_holder_goes_stale_and_not_before(tmp_path, capsys):
    """A restarted sweep trial: its earlier driver died on another host, so only the heartbeat's age can
    tell. Waiting takes the lease once it is stale; a holder that keeps beating is refused after the wait."""
    folder = tmp_path / "r1"
    folder.mkdir()
    lease_file = folder / LEASE_FILE
    lease_file.write_text(json.dumps({"token": "x", "host": "node-7", "pid": 1}))
    with pytest.raises(RunError, match="being run by another driver"):
        Lease(str(folder), "r1", stale_s=1.0).acquire()
    t0 = time.monotonic()
    lease = Lease(str(folder), "r1", stale_s=1.0).acquire(wait_s=10)
    assert 0.5 < time.monotonic() - t0 < 5 and json.loads(lease_file.read_text())["token"] == lease.token
    assert "waiting up to 10s for its earlier driver (pid 1 on host node-7)" in capsys.readouterr().out
    lease.release()
    lease_file.write_text(json.dumps({"token": "y", "host": "node-7", "pid": 1}))
    stop = threading.Event()

    def beat():  # a live holder on another host
        while not stop.wait(0.1):
            os.utime(lease_file)
    beating = threading.Thread(target=beat)
    beating.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RunError, match="being run by another driver"):
            Lease(str(folder), "r1", stale_s=1.0).acquire(wait_s=2)
        assert time.monotonic() - t0 >= 2
    finally:
        stop.set()
        beating.join()
    with pytest.raises(ValueError, match="wait_s must be >= 0, got wait_s=-1"):
        Lease(str(folder), "r1").acquire(wait_s=-1)


def test_a_lease_heartbeat_keeps_it_fresh(tmp_path):
    lease = Lease(str(tmp_path), "r1", heartbeat_s=0.05).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LEASE_FILE, (old, old))
    time.sleep(0.3)
    assert time.time() - os.path.getmtime(tmp_path / LEASE_FILE) < 5 and not lease.lost
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists()
