"""One owner per home, on a path and on an S3 API server: ownership by an exclusive create, staleness
on the contender's own clock, takeover that never deletes a fresher claim, a holder that sees a
successor (or cannot renew) stops its run, fencing before every write, a release that frees it at once."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from repb_ray import storage
from repb_ray.errors import OwnershipLost, RunError
from repb_ray.layout import OWNER_DIR
from repb_ray.train.ownership import Ownership, beat_path, claim_path, latest_generation

pytestmark = pytest.mark.unit


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.slow)])
def home(request, tmp_path):
    if request.param == "path":
        return str(tmp_path / "store" / "r1")
    s3 = request.getfixturevalue("s3")
    return storage.join(s3.uri("owners"), uuid.uuid4().hex[:8], "r1")


def _foreign_claim(home, generation, host="node-7", pid=1, job=None):
    """A claim made by a driver on another host (only its beat can tell whether it lives)."""
    assert storage.create_exclusive(claim_path(home, generation),
                                    json.dumps({"token": "x", "host": host, "pid": pid, "job": job}).encode())


def test_the_first_driver_takes_generation_1_by_an_exclusive_create(home):
    owner = Ownership(home, "r1").acquire()
    assert owner.generation == 1 and latest_generation(home) == 1
    assert not storage.create_exclusive(claim_path(home, 1), b"{}")  # nobody else can create it
    assert json.loads(storage.read_bytes(claim_path(home, 1)))["token"] == owner.token
    owner.release()
    assert storage.read_json(beat_path(home, 1))["released"]
    nxt = Ownership(home, "r1").acquire()  # released: no wait
    assert nxt.generation == 2
    nxt.release()


def test_a_live_holder_on_another_host_is_refused_once_its_beat_is_seen(home):
    _foreign_claim(home, 1, job="raysubmit_abc")
    stop = threading.Event()

    def beat():
        n = 0
        while not stop.wait(0.05):
            n += 1
            storage.write_json(beat_path(home, 1), {"token": "x", "beat": n, "released": False})
    t = threading.Thread(target=beat)
    t.start()
    try:
        with pytest.raises(RunError, match=r"Ray job raysubmit_abc.*ray job stop raysubmit_abc"):
            Ownership(home, "r1", stale_s=5, heartbeat_s=0.2).acquire()
    finally:
        stop.set()
        t.join()
    assert latest_generation(home) == 1  # refused: no claim made


def test_staleness_is_the_contenders_own_clock_not_file_times(home, monkeypatch):
    """A holder whose beat stopped is taken over after stale_s of the contender's monotonic clock, whatever
    the wall clocks say (a host 50 s ahead would have judged a fresh file stale)."""
    _foreign_claim(home, 1)
    storage.write_json(beat_path(home, 1), {"token": "x", "beat": 7, "released": False})
    t0 = time.monotonic()
    owner = Ownership(home, "r1", stale_s=1.0, heartbeat_s=0.2).acquire()
    assert owner.generation == 2 and 1.0 <= time.monotonic() - t0 < 10
    assert storage.exists(claim_path(home, 1))  # the old claim is history, never deleted
    owner.release()


def test_two_contenders_for_a_stale_run_one_wins_and_nothing_is_deleted(home):
    _foreign_claim(home, 1)
    results = []

    def contend():
        try:
            results.append(Ownership(home, "r1", stale_s=0.5, heartbeat_s=0.1).acquire())
        except RunError as exc:
            results.append(exc)
    threads = [threading.Thread(target=contend) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Ownership)]
    assert len(winners) == 1 and winners[0].generation == 2
    assert all("being run by another driver" in str(r) for r in results if not isinstance(r, Ownership))
    assert latest_generation(home) == 2 and storage.exists(claim_path(home, 1))
    winners[0].release()


def test_a_holder_that_sees_a_successor_stops_its_run_and_its_fence_fails(home):
    owner = Ownership(home, "r1", heartbeat_s=0.05).acquire()
    stopped = threading.Event()
    owner.on_lost.append(stopped.set)
    fence = owner.fence
    fence.check()
    _foreign_claim(home, 2)  # taken over (it was judged stale elsewhere)
    assert stopped.wait(5) and owner.lost
    with pytest.raises(OwnershipLost, match="taken over by another driver"):
        fence.check()
    with pytest.raises(OwnershipLost):
        owner.check()
    owner.release()
    assert not storage.read_json(beat_path(home, 1))["released"]  # a lost holder writes nothing more


def test_a_heartbeat_outage_is_retried_then_stops_the_run_before_it_can_go_stale(tmp_path, capsys):
    """A transient failure (ESTALE, a 503) is retried and warned about once; one that lasts half the
    staleness period stops the run, before any contender could judge it stale."""
    home = str(tmp_path / "r1")
    owner = Ownership(home, "r1", stale_s=3.0, heartbeat_s=0.05).acquire()  # stops after 1.5 s without a beat
    stopped = threading.Event()
    owner.on_lost.append(stopped.set)
    folder = os.path.join(home, OWNER_DIR)

    def outage(seconds):
        os.rename(folder, folder + ".away")  # the folder is gone and a file stands in its way: every beat fails
        open(folder, "w").close()
        try:
            return stopped.wait(seconds)
        finally:
            os.unlink(folder)
            os.rename(folder + ".away", folder)
    assert not outage(0.2) and not owner.lost  # short: retried, the run goes on
    time.sleep(0.2)
    assert "retrying" in capsys.readouterr().out
    assert outage(5) and owner.lost  # long: stopped
    out = capsys.readouterr().out
    assert "could not renew its ownership" in out and "stopping it" in out
    owner.release()


HOLD = """
import sys, time
from repb_ray.train.ownership import Ownership
owner = Ownership(sys.argv[1], "r1").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # a holder in its own process
def test_a_holder_on_this_host_is_refused_while_alive_and_taken_over_once_its_process_ended(tmp_path):
    home = str(tmp_path / "r1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, home], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as e:
            Ownership(home, "r1").acquire()
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and f"kill {holder.pid}" in msg
        assert "\n" not in msg
    finally:
        holder.kill()
        holder.wait()
    owner = Ownership(home, "r1").acquire()  # its process ended: no wait
    assert owner.generation == 2
    owner.release()


def test_a_waiting_contender_takes_over_once_stale_and_not_before(tmp_path, capsys):
    home = str(tmp_path / "r1")
    _foreign_claim(home, 1)
    t0 = time.monotonic()
    owner = Ownership(home, "r1", stale_s=1.0, heartbeat_s=0.2).acquire(wait_s=10)
    assert 0.9 < time.monotonic() - t0 < 5 and owner.generation == 2
    assert "held by pid 1 on host node-7; waiting up to 10s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="wait_s must be >= 0, got wait_s=-1"):
        Ownership(home, "r1").acquire(wait_s=-1)
    owner.release()
