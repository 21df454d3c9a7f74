"""One driver per run: a lease file in the run's output folder, created exclusively (O_EXCL, atomic on
local disks and NFS), naming its holder (host, pid, Ray job) and renewed by a heartbeat. A second
driver of a live run is refused in one line naming the holder; a lease whose holder is gone (its
process ended on this host, or no heartbeat for STALE_S) is taken over. Runs in the driver."""

from __future__ import annotations

import _thread
import json
import os
import socket
import threading
import time
import uuid

from repb_ray.errors import RunError

LEASE_FILE = ".lease.json"
HEARTBEAT_S = 10.0
STALE_S = 60.0


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


class Lease:
    """The lease of the run `name` in `folder` (its output folder)."""

    def __init__(self, folder: str, name: str, what: str = "run", stale_s: float = STALE_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.folder, self.name, self.what = folder, name, what
        self.path = os.path.join(folder, LEASE_FILE)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self.info = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "job": ray_job_id(),
                     "started": time.time()}
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it --------------------------------------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> Lease:
        """Take the lease. A holder that is not gone refuses it at once, or, with wait_s, once it has
        stayed alive that long (a restarted sweep trial waits for its earlier driver's heartbeat to
        go stale: on another host nothing else tells that it died)."""
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got wait_s={wait_s}")
        deadline, told, races = time.monotonic() + wait_s, False, 0
        while True:
            if self._create():
                self._start_heartbeat()
                return self
            holder = self.holder()
            if holder is None or self._gone(holder):  # released since our attempt, or its holder is gone
                races += 1
                if races > 3:
                    raise RunError(f"{self.what} {self.name!r}: could not take its lease in {self.folder} (another "
                                   "driver keeps taking it); stop the other drivers of this run first")
                if holder is not None:
                    self._take_over()
                continue
            if time.monotonic() >= deadline:
                raise RunError(self._refusal(holder))
            if not told:
                print(f"[repb_ray] {self.what} {self.name!r}: waiting up to {wait_s:.0f}s for its earlier driver "
                      f"(pid {holder.get('pid')} on host {holder.get('host')}) to end", flush=True)
                told = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.info, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def holder(self) -> dict | None:
        try:
            with open(self.path) as fh:
                data = json.load(fh)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or unreadable: judged by its age below

    def _gone(self, holder: dict) -> bool:
        """Whether the holder is gone: its process ended (same host), or no heartbeat for stale_s."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _alive(holder["pid"]):
                return True
        age = self._age()
        return age is None or age > self.stale_s

    def _age(self) -> float | None:
        """Seconds since the last heartbeat (the file's modification time), None when it is gone."""
        try:
            return time.time() - os.path.getmtime(self.path)
        except OSError:
            return None

    def _take_over(self) -> None:
        """Move the dead holder's lease aside (a rename: only one contender wins it), then drop it."""
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        os.unlink(aside)

    def _refusal(self, holder: dict) -> str:
        age = self._age()
        who = f"pid {holder.get('pid')} on host {holder.get('host')}"
        job = holder.get("job")
        stop = f"ray job stop {job}" if job else f"kill {holder.get('pid')} on {holder.get('host')}"
        return (f"{self.what} {self.name!r} is being run by another driver ({who}"
                + (f", Ray job {job}" if job else "")
                + (f", last heartbeat {age:.0f}s ago" if age is not None else "")
                + f"); wait for it to end, stop it ({stop}), or give this {self.what} its own name (--set name=...)")

    # -- keeping it -------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="repb-ray-lease")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.holder()
            if not holder or holder.get("token") != self.token:
                self.lost = True
                print(f"[repb_ray] error: {self.what} {self.name!r} lost its lease in {self.folder} to another "
                      "driver; stopping", flush=True)
                _thread.interrupt_main()
                return
            try:
                os.utime(self.path)  # the heartbeat: the file's time, never its content (no clobbering)
            except OSError:
                pass  # a storage hiccup: the next beat tries again (STALE_S spans several)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
