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
    uri = cfg.tracking_uri or ""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ConfigError(f"tracking_uri={uri!r} is a relative SQLite path, and this run is on a Ray cluster: it would "
                          "land in the driver's working directory (deleted with the job); give an absolute one "
                          "(sqlite:////abs/path/mlflow.db) or an MLflow server (http://...)")
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
    """On a multi-node cluster, a run's home (its storage root, when that is a path) must be the same
    folder on every node: a node-local path would scatter its checkpoints. Checked with a marker file.
    The output folder may be local to the driver (the workers write nothing there) and a URI needs no
    check."""
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    from repb_ray.train.run_home import storage_root
    root = storage_root(cfg)
    if "://" in root:
        return
    missing = unseen_paths([root], nodes, probe)
    if missing:
        path, node = missing[0]
        raise ConfigError(f"{path} is not visible from node {node.get('NodeManagerAddress')} (it is local to this "
                          "node), and it would hold this run's checkpoints; put them on storage every node reaches "
                          "(--set storage_path=s3://bucket/prefix, or a path every node mounts)")


def check_resources(cfg: Config, num_samples: int, nodes: list[dict] | None = None) -> None:
    """Before anything starts: more coordinator shards than samples, a coordinator (shard) bigger than
    any node's memory, or worker_resources no node offers are one line each (on a cluster that may still
    grow, the last is a warning: an autoscaler can add the node)."""
    import ray

    from repb_ray.train.shards import BASE_BYTES, BYTES_PER_SAMPLE, memory_request
    if cfg.coordinator_shards > num_samples:
        raise ConfigError(f"coordinator_shards={cfg.coordinator_shards} is more than the {num_samples} training samples; "
                          f"use at most {num_samples}")
    nodes = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive", True)]
    span = -(-num_samples // cfg.coordinator_shards)
    need = memory_request(span)
    largest = max((n.get("Resources", {}).get("memory", 0) for n in nodes), default=0)
    if largest and need > largest:
        shards = -(-int(BYTES_PER_SAMPLE * num_samples) // max(int(largest - BASE_BYTES), 1))
        raise ConfigError(f"the coordinator needs {need / 2**30:.1f} GiB of memory per shard for {num_samples} samples "
                          f"with coordinator_shards={cfg.coordinator_shards}, and the largest node offers "
                          f"{largest / 2**30:.1f} GiB; set coordinator_shards={max(shards, cfg.coordinator_shards + 1)} "
                          "or more")
    for key, amount in cfg.worker_resources.items():
        most = max((n.get("Resources", {}).get(key, 0) for n in nodes), default=0)
        if most < amount:
            msg = (f"worker_resources asks {key}={amount} per worker and no node offers that much (most: {most}); "
                   f"start nodes with --resources='{{\"{key}\": {amount}}}' or drop it")
            if on_cluster():
                print(f"[repb_ray] warning: {msg} (waiting for the cluster to add such a node)", flush=True)
            else:
                raise ConfigError(msg)


def check_data_visible(ds, nodes: list[dict] | None = None, probe=_probe_on_nodes) -> None:
    """On a multi-node cluster, Parquet files on a local path must be the same files on every node (the
    read tasks run anywhere): a prepared folder local to the driver's node is one line here, not a
    FileNotFoundError in a read task. Probes the existence of one file per folder, writes nothing."""
    import ray

    from repb_ray.data.sources import id_block_source
    src = id_block_source(ds) if _ray_compat.is_dataset(ds) else None
    if src is None:
        return
    files = [b.path for b in src.blocks if b.path and "://" not in b.path]
    check_files_visible(files, [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive")], probe)


def check_files_visible(files: list[str], nodes: list[dict], probe=_probe_on_nodes) -> None:
    """One file of each folder of `files` probed from every node (more than one node only)."""
    if len(nodes) <= 1:
        return
    firsts: dict = {}
    for path in files:
        firsts.setdefault(os.path.dirname(path), path)
    for folder, path in sorted(firsts.items()):
        missing = [n for n, ok in zip(nodes, probe(nodes, path)) if not ok]
        if missing:
            raise ConfigError(f"the training data in {folder} is not visible from node "
                              f"{missing[0].get('NodeManagerAddress')} (it is local to this node), and read tasks run "
                              "on any node; put it on storage every node reaches (a bucket URI or a path every node "
                              "mounts), or serve it from memory")
