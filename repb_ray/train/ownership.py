"""One owner per run or sweep home (a path or a URI), in the driver, with fencing. Ownership is a
numbered claim, `_owner/g000001.json`, taken by an exclusive create (O_EXCL on a path, a conditional
put on S3): generation g+1 can be created by one contender only, so a takeover never deletes or
overwrites anyone's claim. The holder of generation g renews `_owner/g000001.beat.json` (a counter)
every HEARTBEAT_S; a contender judges the holder gone when that counter has not changed for STALE_S
of its own monotonic clock (no clock is compared across hosts), when the holder's process has ended
on this host, or when the holder released it. A holder that sees a later generation, or cannot renew
its beat for half of STALE_S, has lost the run: it stops it (on_lost) and deletes nothing. Every
write of run state checks the fence first (`Fence.check`: no later generation exists)."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from repb_ray import storage
from repb_ray.errors import OwnershipLost, RunError, StorageError
from repb_ray.layout import OWNER_DIR

HEARTBEAT_S = 10.0
STALE_S = 60.0
# tests shorten both through these variables (read when an Ownership is made, in the driver)
HEARTBEAT_ENV, STALE_ENV = "REPB_RAY_HEARTBEAT_S", "REPB_RAY_STALE_S"
_CLAIM = re.compile(r"g(\d{6})\.json")


def ray_job_id() -> str | None:
    """The submission id of the `ray job submit` job this process runs in, if any."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_path(home: str, generation: int) -> str:
    return storage.join(home, OWNER_DIR, f"g{generation:06d}.json")


def beat_path(home: str, generation: int) -> str:
    return storage.join(home, OWNER_DIR, f"g{generation:06d}.beat.json")


def latest_generation(home: str) -> int:
    """The highest claimed generation in `home` (0: never owned). A failed listing raises."""
    gens = [int(m.group(1)) for name in storage.list_entries(storage.join(home, OWNER_DIR))
            if (m := _CLAIM.fullmatch(name))]
    return max(gens, default=0)


@dataclass(frozen=True)
class Fence:
    """What a process writing run state checks first: that generation `generation` still owns `home`.
    Plain strings and ints (sent to the coordinator and written into every state it saves)."""

    home: str
    generation: int

    def check(self) -> None:
        if storage.exists(claim_path(self.home, self.generation + 1)):
            raise OwnershipLost(f"{storage.display(self.home)} was taken over by another driver (generation "
                                f"{self.generation + 1}); this run stops and writes nothing more there")


class Ownership:
    """This driver's ownership of `home` (a run's or a sweep's storage folder)."""

    def __init__(self, home: str, name: str, what: str = "run", stale_s: float | None = None,
                 heartbeat_s: float | None = None):
        self.home, self.name, self.what = home, name, what
        self.stale_s = float(os.environ.get(STALE_ENV, STALE_S)) if stale_s is None else stale_s
        self.heartbeat_s = float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S)) if heartbeat_s is None else heartbeat_s
        if not 0 < self.heartbeat_s < self.stale_s / 2:
            raise ValueError(f"the heartbeat must be renewed at least twice per staleness period, got "
                             f"heartbeat_s={self.heartbeat_s}, stale_s={self.stale_s}")
        self.token = uuid.uuid4().hex
        self.info = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "job": ray_job_id(),
                     "started": time.time()}
        self.generation: int | None = None
        self.lost: str | None = None     # why this driver lost the run, once it has
        self.on_lost: list = []          # called (from the heartbeat thread) when it is lost
        self._beats = 0
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fence(self) -> Fence:
        assert self.generation is not None, "ownership not acquired"
        return Fence(self.home, self.generation)

    # -- taking it --------------------------------------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> Ownership:
        """Take the home. A holder that is alive refuses it (at once, or once it has stayed alive for
        wait_s: a restarted sweep trial waits for its earlier driver to go stale); one that is gone is
        succeeded by the next generation."""
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got wait_s={wait_s}")
        deadline = time.monotonic() + wait_s
        for _ in range(5):
            g = latest_generation(self.home)
            if g and not self._gone(g, deadline):
                raise RunError(self._refusal(g))
            data = json.dumps(self.info).encode()
            if storage.create_exclusive(claim_path(self.home, g + 1), data):
                if storage.create_exclusive(claim_path(self.home, g + 1), data):  # the store's own word, checked
                    raise StorageError(f"{storage.display(self.home)}: the store accepted a second exclusive create of "
                                       "one object (it ignores If-None-Match), so repb_ray cannot keep one driver per "
                                       "run there; use a store that honours conditional writes (AWS S3, MinIO, Ceph "
                                       "RGW, R2) or a path every node mounts")
                self.generation = g + 1
                self._beat()
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name=f"repb-ray-owner-{self.name}")
                self._thread.start()
                return self
        raise RunError(f"{self.what} {self.name!r}: could not take {storage.display(self.home)} (other drivers keep "
                       "taking it); stop the other drivers of this run first")

    def _read(self, location: str) -> dict | None:
        for attempt in range(3):  # a transient read error (ESTALE, a 503) is retried before it counts
            try:
                if not storage.exists(location):
                    return None
                data = storage.read_json(location)
                return data if isinstance(data, dict) else {}
            except ValueError:
                return {}  # half-written: judged by whether it changes
            except OSError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _gone(self, g: int, deadline: float) -> bool:
        """Whether generation g's holder is gone: released, its process ended on this host, or its beat
        unchanged for stale_s of this process's monotonic clock. Waits while it is alive until deadline."""
        holder = self._read(claim_path(self.home, g)) or {}
        poll = max(0.05, min(1.0, self.heartbeat_s / 4))
        told = False
        last, since = self._read(beat_path(self.home, g)), time.monotonic()
        while True:
            if last and last.get("released"):
                return True
            if latest_generation(self.home) != g:
                return True  # succeeded meanwhile: the caller looks again
            same_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
            if same_host and holder["pid"] != os.getpid() and not _alive(holder["pid"]):
                return True
            if time.monotonic() - since >= self.stale_s:
                return True
            if same_host and time.monotonic() >= deadline:
                return False  # alive here
            if not told:
                wait = max(deadline - time.monotonic(), 0)
                print(f"[repb_ray] {self.what} {self.name!r}: {storage.display(self.home)} is held by pid "
                      f"{holder.get('pid')} on host {holder.get('host')}; "
                      + (f"waiting up to {wait:.0f}s for it to end" if wait > 0 else
                         f"checking whether it is alive (up to {self.stale_s:.0f}s)"), flush=True)
                told = True
            time.sleep(poll)
            beat = self._read(beat_path(self.home, g))
            if beat != last:
                last, since = beat, time.monotonic()
                if time.monotonic() >= deadline and not (beat and beat.get("released")):
                    return False  # it beats: alive

    def _refusal(self, g: int) -> str:
        holder = self._read(claim_path(self.home, g)) or {}
        who = f"pid {holder.get('pid')} on host {holder.get('host')}"
        job = holder.get("job")
        stop = f"ray job stop {job}" if job else f"kill {holder.get('pid')} on {holder.get('host')}"
        return (f"{self.what} {self.name!r} is being run by another driver ({who}" + (f", Ray job {job}" if job else "")
                + f", owner of {storage.display(self.home)}); wait for it to end, stop it ({stop}), or give this "
                f"{self.what} its own name (--set name=...)")

    # -- keeping it -------------------------------------------------------------------------------
    def _beat(self, released: bool = False) -> None:
        self._beats += 1
        storage.write_json(beat_path(self.home, self.generation), {"token": self.token, "beat": self._beats,
                                                                   "released": released})

    def _heartbeat(self) -> None:
        last_ok, warned = time.monotonic(), False
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.fence.check()
                self._beat()
                last_ok = time.monotonic()
                continue
            except OwnershipLost as exc:
                self._lose(str(exc))
                return
            except Exception as exc:  # storage trouble: warn, and stop the run before it can go stale
                if not warned:
                    print(f"[repb_ray] warning: {self.what} {self.name!r}: could not renew its ownership of "
                          f"{storage.display(self.home)} ({type(exc).__name__}); retrying", flush=True)
                    warned = True
            if time.monotonic() - last_ok > self.stale_s / 2:
                self._lose(f"could not renew its ownership of {storage.display(self.home)} for "
                           f"{time.monotonic() - last_ok:.0f}s, so another driver may take it over")
                return

    def _lose(self, why: str) -> None:
        self.lost = why
        print(f"[repb_ray] error: {self.what} {self.name!r}: {why}; stopping it", flush=True)
        for callback in list(self.on_lost):
            try:
                callback()
            except Exception:  # noqa: BLE001 - stopping is best effort; the fence stops every writer anyway
                pass

    def check(self) -> None:
        """Raise OwnershipLost unless this driver still owns the home."""
        if self.lost:
            raise OwnershipLost(f"{self.what} {self.name!r}: {self.lost}")
        self.fence.check()

    def release(self) -> None:
        """Stop renewing; mark the generation released (a successor need not wait), unless it was lost.
        Once: a second call (after the home was cleared) writes nothing."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        if self.generation is None or self.lost:
            return
        try:
            self.fence.check()
            self._beat(released=True)
        except Exception:  # noqa: BLE001 - a successor then waits stale_s
            pass
