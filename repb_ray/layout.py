"""RunLayout: every folder and file name of a run, in one place. A run's home STORAGE/NAME (a path or a
URI every node reaches) holds its record, its owner, the coordinator's states and Ray Train's
checkpoints; its output folder OUTPUT/NAME (local to the driver) holds what a person reads. A sweep's
home and output folder are marked by their own records. Runs anywhere (no torch, no Ray)."""

from __future__ import annotations

import os
from dataclasses import dataclass

# in a run's home (STORAGE/NAME)
RECORD_FILE = "repb_run.json"       # the run's identity, created, finished_at
OWNER_DIR = "_owner"                # the ownership claims (train/ownership.py)
COORDINATOR_DIR = "coordinator"     # the coordinator's states, one folder per saved epoch
RAY_TRAIN_FILES = ("checkpoint_manager_snapshot.json", ".validate_storage_marker")  # Ray Train's bookkeeping
# in a run's output folder (OUTPUT/NAME)
SUMMARY_FILE = "summary.json"       # written by a run that ended
CURVES_FILE = "curves.png"
COUNTS_FILE = "selection_counts.npz"
ERROR_LOG = "error.log"
AUDIT_DIR = "audit"                 # per-rank ids and weights of every epoch (config `audit`)
OUTPUTS = (SUMMARY_FILE, CURVES_FILE, COUNTS_FILE, ERROR_LOG, AUDIT_DIR)   # cleanup touches nothing else there
# a sweep's
SWEEP_RECORD = "repb_sweep.json"    # in STORAGE/SWEEP: marks a sweep's home
SWEEP_FILE = "sweep.json"           # marks a sweep's output folder
TRIALS_DIR = "trials"               # OUTPUT/SWEEP/trials/TRIAL: each trial's output folder


def checkpoint_name(epoch: int, step: int = 0, attempt: int = 0) -> str:
    """Ray Train's checkpoint folder at the end of `epoch`, or after `step` optimizer steps of it in the
    run's `attempt`-th (re)start (an attempt that went back to the epoch's start names its own), in the home."""
    return f"epoch_{epoch:03d}" if not step else f"epoch_{epoch:03d}_attempt_{attempt:03d}_step_{step:06d}"


def state_name(epochs_done: int, step: int = 0, attempt: int = 0) -> str:
    """The coordinator's saved state after `epochs_done` epochs (and `step` optimizer steps of the next, in
    the run's `attempt`-th (re)start), in the home's coordinator folder; the names sort in the order the
    states were saved."""
    return (f"epoch_{epochs_done:05d}" if not step
            else f"epoch_{epochs_done:05d}_attempt_{attempt:03d}_step_{step:06d}")


def is_checkpoint(entry: str) -> bool:
    """A checkpoint folder of Ray Train's in a home (named by checkpoint_name, or Ray's default)."""
    return entry.startswith("epoch_") or entry.startswith("checkpoint_")


def is_within_epoch(entry: str) -> bool:
    """A checkpoint folder or state named for a point within an epoch."""
    return "_step_" in entry


def is_state(entry: str) -> bool:
    """A saved coordinator state (named by state_name) in the coordinator folder."""
    return entry.startswith("epoch_")


@dataclass(frozen=True)
class RunLayout:
    """The places of one run: `home` (STORAGE/NAME, a path or URI) and `out` (OUTPUT/NAME, a path)."""

    home: str
    out: str

    @property
    def record(self) -> str:
        return _join(self.home, RECORD_FILE)

    @property
    def coordinator(self) -> str:
        return _join(self.home, COORDINATOR_DIR)

    @property
    def summary(self) -> str:
        return os.path.join(self.out, SUMMARY_FILE)

    @property
    def curves(self) -> str:
        return os.path.join(self.out, CURVES_FILE)

    @property
    def counts(self) -> str:
        return os.path.join(self.out, COUNTS_FILE)

    @property
    def audit(self) -> str:
        return os.path.join(self.out, AUDIT_DIR)


def _join(home: str, name: str) -> str:
    from repb_ray import storage  # storage imports errors, which names its log file from here
    return storage.join(home, name)
