"""The driver's Ray environment: joining a cluster or starting a private local Ray on 127.0.0.1,
shipping the task's module to the workers, paths that every node must reach, and what a train
dataset says about itself. Runs in the driver."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import sysconfig

import numpy as np

from repb_ray import _ray_compat
from repb_ray.config import Config
from repb_ray.errors import ConfigError, DataError
from repb_ray.tasks.loader import resolve_path


def local_ray_cpus(cfg: Config) -> int:
    """Logical CPUs for a local Ray: the machine's, but at least the workers' plus two for Ray Data
    tasks (with every CPU held by Train workers, Ray Data's tasks never get scheduled)."""
    need = int(np.ceil(cfg.world_size * cfg.cpus_per_worker)) + 2
    return max(os.cpu_count() or 1, need)


def task_runtime_env(task: str) -> dict | None:
    """Ship the task's module to every Ray process (py_modules) unless it is installed or part of
    repb_ray. The module is found from the current directory first, as `python -m` would."""
    module_name = resolve_path(task).split(":")[0]
    top = module_name.split(".")[0]
    if top == "repb_ray":
        return None
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = importlib.import_module(top)
    path = module.__path__[0] if hasattr(module, "__path__") else module.__file__
    installed = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    if any(os.path.abspath(path).startswith(os.path.abspath(p)) for p in installed):
        return None
    return {"py_modules": [path]}


def in_submitted_job() -> bool:
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def on_cluster() -> bool:
    return in_submitted_job() or bool(os.environ.get("RAY_ADDRESS"))


def check_cluster_paths(cfg: Config) -> None:
    """On a cluster a relative output_dir lands in the driver's working directory (under `ray job
    submit`, a temporary copy deleted with the job) on one node only: refuse it."""
    if not on_cluster():
        return
    if not os.path.isabs(cfg.output_dir):
        raise ConfigError(f"output_dir={cfg.output_dir!r} is relative, and this run is on a Ray cluster: it would land in "
                          "the driver's working directory (a temporary copy under `ray job submit`, deleted with the "
                          "job) on one node; pass --output-dir /shared/path, a volume every node mounts")
    if cfg.storage_path is not None and "://" not in cfg.storage_path and not os.path.isabs(cfg.storage_path):
        raise ConfigError(f"storage_path={cfg.storage_path!r} is relative, and this run is on a Ray cluster; use an "
                          "absolute path on storage every node mounts, or a URI (s3://...)")


def ensure_ray(cfg: Config, runtime_env: dict | None = None, verbose: bool = False) -> None:
    """Connect to RAY_ADDRESS when set (inside `ray job submit` the job's working_dir already carries
    the task's module), else start a private local Ray bound to 127.0.0.1. The task's module ships
    with the job's runtime environment (Ray uploads local modules only at this level); when Ray is
    already up in this process (a Tune trial, a notebook), it must be importable there already.
    Unless verbose, Ray's own logs and the workers' output stay in Ray's log files."""
    import ray
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if not verbose:
        from ray.data import DataContext
        DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    env = None if in_submitted_job() else runtime_env
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env, **quiet)
    else:
        _ray_compat.init_local(num_cpus=local_ray_cpus(cfg), include_dashboard=False, runtime_env=env, **quiet)


def num_samples_of(ds) -> int:
    """n for a train dataset: known from an id-block source, else by streaming its id column once."""
    from repb_ray.data.pipeline import check_ids
    if not _ray_compat.is_dataset(ds):
        raise DataError(f"train_dataset() returned {type(ds).__name__}; return a ray.data.Dataset with an int64 'id' "
                        "column (repb_ray.data.from_numpy or read_parquet make one)")
    from repb_ray.data.sources import id_block_source
    src = id_block_source(ds)
    if src is not None:
        return int(src.num_samples)
    schema = ds.schema()
    names = schema.names if schema is not None else []
    if "id" not in names:
        raise DataError(f"the train dataset has no 'id' column (columns: {', '.join(names) or 'none'}); every row "
                        "needs an int64 id, 0..n-1 (repb_ray.data.from_numpy adds one; `repb-ray prepare` writes one)")
    return check_ids(ds)


def unseen_paths(paths: list[str], nodes: list[dict], probe) -> list[tuple[str, dict]]:
    """(path, node) pairs where `probe(node, marker)` cannot see a marker file written in `path` by
    this process. Writes and removes only its own uniquely named markers."""
    import uuid
    missing = []
    for path in paths:
        os.makedirs(path, exist_ok=True)
        marker = os.path.join(path, f".repb-visible-{uuid.uuid4().hex[:12]}")
        open(marker, "w").close()
        try:
            seen = probe(nodes, marker)
            missing += [(path, n) for n, ok in zip(nodes, seen) if not ok]
        finally:
            os.unlink(marker)
    return missing


def _probe_on_nodes(nodes: list[dict], marker: str) -> list[bool]:
    """Whether each node sees `marker` (a zero-CPU task pinned to the node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    exists = ray.remote(num_cpus=0)(os.path.exists)
    refs = [exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes]
    return ray.get(refs, timeout=120)


def check_shared_paths(cfg: Config, probe=_probe_on_nodes) -> None:
    """On a multi-node cluster, the output folder (and a local storage path) must be the same folder on
    every node: a node-local path would scatter a run's files. Checked with a marker file."""
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    paths = [os.path.abspath(cfg.output_dir)]
    if cfg.storage_path is not None and "://" not in cfg.storage_path:
        paths.append(os.path.abspath(cfg.storage_path))
    missing = unseen_paths(paths, nodes, probe)
    if missing:
        path, node = missing[0]
        raise ConfigError(f"{path} is not visible from node {node.get('NodeManagerAddress')} (it is local to this "
                          "node); put outputs and checkpoints on storage every node mounts (--output-dir "
                          "/shared/path, storage_path=/shared/path or a URI)")
