"""Run identities and ownership, in the driver. A run is its name's two folders: OUTPUT/NAME (run.json,
summary, the lease) and STORAGE/NAME (Ray Train's checkpoints and the coordinator's states, on a path
or a URI). Both hold the run's identity: its config and a fingerprint of what decides the training
trajectory. Same name and fingerprint: resume. Another fingerprint in either place: refused before
anything starts, unless --resume or --overwrite is asked for. One driver per run (train/lease.py).
Cleanup deletes only what this invocation created, or, with --overwrite, only the run's own files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field

from repb_ray import storage
from repb_ray.config import Config
from repb_ray.errors import ConfigError, RunError
from repb_ray.redact import redact
from repb_ray.train.lease import Lease

# keys that do not change what is trained (where outputs go, tracking, timeouts, test hooks)
NOT_IDENTITY = {"name", "output_dir", "storage_path", "tracking_uri", "experiment", "tags", "max_failures",
                "fail_at", "audit", "coordinator_timeout_s", "observe_every", "prefetch_batches", "eval_batch_size",
                "worker_resources"}
RUN_FILE = "run.json"                # in OUTPUT/NAME
SUMMARY_FILE = "summary.json"        # in OUTPUT/NAME, written by a run that ended
STORAGE_RECORD = "repb_run.json"     # in STORAGE/NAME, beside the checkpoints
SWEEP_FILE = "sweep.json"            # marks a sweep's folder
# what a run writes in OUTPUT/NAME: --overwrite and cleanup touch nothing else there
OUTPUTS = (RUN_FILE, SUMMARY_FILE, "curves.png", "selection_counts.npz", "error.log", "audit")
MARKER_PREFIX = ".injected_"         # fault-injection markers of the tests (fail_at)
FINISHED = "finished_at"             # in run.json once summary.json and tracking are complete


def identity(cfg: Config) -> dict:
    """What decides the training, redacted (a rotated credential is the same run)."""
    return redact({k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY})


def fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()


def default_name(config_path: str | None, cfg: Config) -> str:
    """<config file stem>-<8 hex of the fingerprint>: the same config resumes, another one gets its
    own run; without a file, a timestamp and a random suffix."""
    if config_path:
        return f"{os.path.splitext(os.path.basename(config_path))[0]}-{fingerprint(cfg)[:8]}"
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def storage_root(cfg: Config) -> str:
    """Where Ray Train and the coordinator keep the run's checkpoints: storage_path or OUTPUT/ray_results."""
    root = cfg.storage_path or os.path.join(cfg.output_dir, "ray_results")
    return root if storage.is_uri(root) else os.path.abspath(root)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(old: dict, new: dict) -> list[str]:
    """The changes between two identities, key by key (nested keys dotted: policy_args.rho)."""
    old, new = _flat(old), _flat(new)
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _read_record(location: str) -> dict | None:
    if not storage.exists(location):
        return None
    try:
        data = storage.read_json(location)
    except (OSError, ValueError) as exc:
        raise RunError(f"{location} is not a readable run record ({type(exc).__name__}); remove it, or give this run "
                       "another name (--set name=...)") from None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
        raise RunError(f"{location} is not a repb_ray run record; give this run another name (--set name=...)")
    return data


def _remove_command(location: str) -> str:
    return f"rm -r {location}" if not storage.is_uri(location) else f"delete {location} with your storage's tools"


def _checkpoints(location: str) -> list[str]:
    return [d for d in storage.list_dirs(location) if d.startswith("epoch_") or d.startswith("checkpoint_")]


@dataclass
class RunClaim:
    """This invocation's hold on a run: its folders, the lease, whether it resumes, and what it created."""

    cfg: Config
    storage_dir: str
    state: str                      # "new" or "resume"
    lease: Lease
    record: dict
    existed: set = field(default_factory=set)   # entries of OUTPUT/NAME before this invocation
    made_run_dir: bool = False
    made_storage_dir: bool = False

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    def has_checkpoint(self) -> bool:
        return bool(_checkpoints(self.storage_dir))

    def save_record(self, **fields) -> None:
        self.record.update(fields)
        storage.write_json(os.path.join(self.run_dir, RUN_FILE), self.record)

    def finish(self) -> None:
        """Record that the run ended: its summary and tracking are complete (finished_summary reads this)."""
        self.save_record(**{FINISHED: time.time()})

    def abandon(self) -> None:
        """A run that failed before its first checkpoint: remove what this invocation created (its run
        record and outputs, its folders), nothing else."""
        if os.path.isdir(self.run_dir):
            for entry in os.listdir(self.run_dir):
                if entry not in self.existed and (entry in OUTPUTS or entry.startswith(MARKER_PREFIX)):
                    _remove(os.path.join(self.run_dir, entry))
        if self.made_storage_dir:
            storage.remove_tree(self.storage_dir)

    def release(self) -> None:
        """Give the lease back; a run folder this invocation made and left empty goes too."""
        self.lease.release()
        if self.made_run_dir:
            try:
                os.rmdir(self.run_dir)
            except OSError:
                pass


def finished_summary(cfg: Config) -> dict | None:
    """The summary of run `cfg.name` when it already ended with this config (run.json says so and its
    summary.json is there), else None. Reads only; takes no lease."""
    record = _read_record(os.path.join(cfg.run_dir, RUN_FILE))
    path = os.path.join(cfg.run_dir, SUMMARY_FILE)
    if record is None or record["fingerprint"] != fingerprint(cfg) or FINISHED not in record or not os.path.exists(path):
        return None
    return storage.read_json(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def claim(cfg: Config, *, resume: bool = False, overwrite: bool = False, lease_wait_s: float = 0.0) -> RunClaim:
    """Take the run `cfg.name` for this invocation, before anything starts: the lease, then its identity
    checked in both folders (and, with overwrite, the run's own files removed first). Raises a
    ConfigError naming the differences when a folder holds another config and neither resume nor
    overwrite was asked for, a RunError when another driver holds the run (still, after lease_wait_s)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pick one")
    run_dir = cfg.run_dir
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} exists and is not a folder; give this run another name (--set name=...)")
    if os.path.exists(os.path.join(run_dir, SWEEP_FILE)):
        raise ConfigError(f"{run_dir} is the folder of a sweep; give this run another name (--set name=...)")
    existed = set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()
    made_run_dir = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    lease = Lease(run_dir, cfg.name)
    try:
        lease.acquire(lease_wait_s)
        return _claim_held(cfg, lease, resume, overwrite, existed, made_run_dir)
    except BaseException:
        lease.release()
        if made_run_dir:
            try:
                os.rmdir(run_dir)
            except OSError:
                pass
        raise


def _claim_held(cfg: Config, lease: Lease, resume: bool, overwrite: bool, existed: set,
                made_run_dir: bool) -> RunClaim:
    run_dir, sdir = cfg.run_dir, storage.join(storage_root(cfg), cfg.name)
    run_file, storage_file = os.path.join(run_dir, RUN_FILE), storage.join(sdir, STORAGE_RECORD)
    stored, in_storage = _read_record(run_file), _read_record(storage_file)
    for rec, where in ((stored, run_file), (in_storage, storage_file)):
        if rec is not None and rec.get("name") not in (None, cfg.name):
            raise RunError(f"{where} records the run {rec.get('name')!r}, not {cfg.name!r}; give this run another name")
    storage_exists = storage.exists(sdir)
    if storage_exists and in_storage is None and _checkpoints(sdir):
        raise RunError(f"{sdir} holds checkpoints but no repb_ray run record, so repb_ray cannot tell whose they are; "
                       f"give this run another name (--set name=...), or remove them yourself ({_remove_command(sdir)})")
    if overwrite:
        if storage_exists:
            storage.remove_tree(sdir)
            storage_exists = False
        for entry in os.listdir(run_dir):
            if entry in OUTPUTS or entry.startswith(MARKER_PREFIX):
                _remove(os.path.join(run_dir, entry))
        existed = {e for e in existed if e not in OUTPUTS and not e.startswith(MARKER_PREFIX)}
        stored = in_storage = None
    fp, ident = fingerprint(cfg), identity(cfg)
    known = [r for r in (stored, in_storage) if r is not None]
    if resume and not known:
        raise ConfigError(f"--resume: there is no run {cfg.name!r} in {cfg.output_dir} to resume")
    mismatched = [r for r in known if r["fingerprint"] != fp]
    if mismatched and not resume:
        changes = _diff(mismatched[0].get("identity", {}), ident)
        where = cfg.output_dir if stored is not None and stored["fingerprint"] != fp else sdir
        raise ConfigError(f"run {cfg.name!r} in {where} was started with another config "
                          f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}); give this one its own "
                          "name (--set name=...), continue that run with --resume, or start it over with --overwrite")
    record = dict(stored or in_storage or {})
    if mismatched:
        record.setdefault("resumed_with", []).append(
            {"at": time.time(), "changes": _diff(mismatched[0].get("identity", {}), ident)})
    record.pop(FINISHED, None)  # a claimed run is running until this invocation finishes it
    record.update(name=cfg.name, fingerprint=fp, identity=ident, config=redact(cfg.to_dict()),
                  storage=redact(sdir), created=record.get("created", time.time()))
    storage.write_json(run_file, record)
    storage.write_json(storage_file, {"name": cfg.name, "fingerprint": fp, "identity": ident,
                                      "created": record["created"]})
    return RunClaim(cfg, sdir, "resume" if known else "new", lease, record, existed, made_run_dir,
                    made_storage_dir=not storage_exists)
