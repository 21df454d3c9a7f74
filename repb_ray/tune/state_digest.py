"""Tune's experiment state is pickled code: a sweep loads it only where its own record says it ran,
and only if the state files are byte for byte what the sweep last saw. A Tune callback records the
digest of the state files after each of Tune's saves (Tune calls on_step_end right after saving);
`check` compares before a restore. Runs in the sweep's driver."""

from __future__ import annotations

import hashlib
import os

from ray.tune import Callback

from repb_ray import storage
from repb_ray.errors import ConfigError

DIGEST_FILE = "tune_state_digest.json"  # in the sweep's home
_FENCES: dict = {}  # home -> the fence of the sweep driver running in this process


def bind(home: str, fence) -> None:
    """The fence this process's sweep driver holds for `home`: the callback checks it before recording.
    (Tune pickles its callbacks into its state and a restored sweep gets the old instance back, so the
    callback itself cannot carry the current driver's fence.)"""
    _FENCES[home] = fence


def digest(exp_dir: str) -> str | None:
    """sha256 over the names and bytes of the files directly in Tune's experiment folder (None: none)."""
    if not os.path.isdir(exp_dir):
        return None
    files = sorted(e.name for e in os.scandir(exp_dir) if e.is_file() and not e.name.startswith("."))
    if not files:
        return None
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0")
        with open(os.path.join(exp_dir, name), "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def record(exp_dir: str, home: str, fence=None) -> None:
    """Write the current digest of Tune's state into the sweep's home (under the sweep's fence)."""
    d = digest(exp_dir)
    if d is None:
        return
    if fence is not None:
        fence.check()
    storage.write_json(storage.join(home, DIGEST_FILE), {"digest": d})


def check(exp_dir: str, home: str, resuming: bool) -> None:
    """Refuse to load Tune's state unless this sweep recorded it there and it is unchanged since."""
    where = storage.join(home, DIGEST_FILE)
    known = storage.read_json(where).get("digest") if resuming and storage.exists(where) else None
    if known is None or known != digest(exp_dir):
        raise ConfigError(f"{exp_dir} holds Tune state that this sweep did not write (or that changed since its last "
                          "save); Tune's state is pickled code, so repb_ray will not load it: start the sweep over "
                          "with --overwrite, or give it another name (--set sweep.name=...)")


class StateDigest(Callback):
    """Records the digest after each of Tune's saves, under the fence bound for its home (plain strings:
    Tune pickles it into its state)."""

    def __init__(self, exp_dir: str, home: str):
        self.exp_dir, self.home = exp_dir, home
        self._last = None

    def on_step_end(self, iteration, trials, **info):
        d = digest(self.exp_dir)
        if d is not None and d != self._last:
            record(self.exp_dir, self.home, _FENCES.get(self.home))
            self._last = d

    def on_experiment_end(self, trials, **info):
        self.on_step_end(0, trials)
