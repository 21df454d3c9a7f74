"""Run identities: a run directory records its config and a fingerprint of what decides the training
trajectory. Same name and fingerprint: resume. Another fingerprint: refused before Ray starts,
unless resume or overwrite is asked for. Runs in the driver."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid

from repb_ray.config import Config, ConfigError

# keys that do not change what is trained (where outputs go, tracking, timeouts, test hooks)
NOT_IDENTITY = {"name", "output_dir", "storage_path", "tracking_uri", "experiment", "tags", "max_failures",
                "fail_at", "audit", "coordinator_timeout_s", "observe_every", "prefetch_batches", "eval_batch_size",
                "worker_resources"}
RUN_FILE = "run.json"


def identity(cfg: Config) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY}


def fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()


def default_name(config_path: str | None, cfg: Config) -> str:
    """<config file stem>-<8 hex of the fingerprint>: the same config resumes, another one gets its
    own run; without a file, a timestamp and a random suffix."""
    if config_path:
        return f"{os.path.splitext(os.path.basename(config_path))[0]}-{fingerprint(cfg)[:8]}"
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def claim(cfg: Config, *, resume: bool = False, overwrite: bool = False, storage: str | None = None) -> str:
    """Decide what the run `cfg.name` does, before anything starts: 'new' or 'resume'. Raises a
    ConfigError naming the differences when the name holds another config and neither resume nor
    overwrite was asked for. overwrite removes the run directory and the run's Train storage."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pick one")
    path = os.path.join(cfg.run_dir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as fh:
            stored = json.load(fh)
        if overwrite:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
            if storage and "://" not in storage:
                shutil.rmtree(os.path.join(storage, cfg.name), ignore_errors=True)
        elif stored.get("fingerprint") == fingerprint(cfg) or resume:
            if stored.get("fingerprint") != fingerprint(cfg):
                stored.setdefault("resumed_with", []).append({"at": time.time(), "changes": _diff(stored["identity"], identity(cfg))})
                stored.update(fingerprint=fingerprint(cfg), identity=identity(cfg), config=_public(cfg))
                _write(path, stored)
            return "resume"
        else:
            changes = _diff(stored.get("identity", {}), identity(cfg))
            raise ConfigError(f"run {cfg.name!r} in {cfg.output_dir} was started with another config "
                              f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}); give this one its "
                              "own name (--set name=...), continue that run with --resume, or start it over with "
                              "--overwrite")
    elif resume:
        raise ConfigError(f"--resume: there is no run {cfg.name!r} in {cfg.output_dir} to resume")
    os.makedirs(cfg.run_dir, exist_ok=True)
    _write(path, {"name": cfg.name, "fingerprint": fingerprint(cfg), "identity": identity(cfg), "config": _public(cfg),
                  "created": time.time()})
    return "new"


def _public(cfg: Config) -> dict:
    from repb_ray.tracking.mlflow_tracking import redacted_params
    return redacted_params(cfg.to_dict())


def _write(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)


def abandon(cfg: Config) -> None:
    """Remove a run that failed before its first checkpoint (nothing to resume): no half-written run
    directory stays behind."""
    ckpts = [d for d in os.listdir(cfg.run_dir)] if os.path.isdir(cfg.run_dir) else []
    if "summary.json" not in ckpts:
        keep = {"error.log"}
        for name in ckpts:
            if name not in keep:
                p = os.path.join(cfg.run_dir, name)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
