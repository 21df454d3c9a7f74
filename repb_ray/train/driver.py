"""The driver of one training run: Ray set-up, the task's datasets, the coordinator, the TorchTrainer,
summary.json and tracking. Runs in the process that calls `repb-ray train` (or a Tune trial)."""

from __future__ import annotations

import importlib
import json
import os
import sys
import sysconfig
import time

import numpy as np

from repb_ray.config import Config
from repb_ray.data.sources import DataError
from repb_ray.task import TaskRef, instantiate, resolve_path


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
    from repb_ray.config import ConfigError
    if not on_cluster():
        return
    if not os.path.isabs(cfg.output_dir) and "://" not in cfg.output_dir:
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
    import logging

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
        ray.init(num_cpus=local_ray_cpus(cfg), include_dashboard=False, runtime_env=env, **quiet)


def num_samples_of(ds) -> int:
    """n for a train dataset: known from an id-block source, else by streaming its id column once."""
    from repb_ray.data.pipeline import check_ids
    if not hasattr(ds, "_logical_plan"):
        raise DataError(f"train_dataset() returned {type(ds).__name__}; return a ray.data.Dataset with an int64 'id' "
                        "column (repb_ray.data.from_numpy or read_parquet make one)")
    ops = [ds._logical_plan.dag]
    while ops:
        op = ops.pop()
        src = getattr(op, "datasource", None)
        if type(src).__name__ == "IdBlockSource":
            return int(src.num_samples)
        ops.extend(getattr(op, "input_dependencies", []))
    schema = ds.schema()
    names = schema.names if schema is not None else []
    if "id" not in names:
        raise DataError(f"the train dataset has no 'id' column (columns: {', '.join(names) or 'none'}); every row "
                        "needs an int64 id, 0..n-1 (repb_ray.data.from_numpy adds one; `repb-ray prepare` writes one)")
    return check_ids(ds)


def run_training(cfg: Config, *, callbacks: list | None = None, progress: bool = True,
                 parent_run_id: str | None = None, resume: bool = False, overwrite: bool = False,
                 verbose: bool = False) -> dict:
    """Train per `cfg`; returns the summary (also written to run_dir/summary.json). The run is
    tracked in MLflow (one run, nested under `parent_run_id` when given) unless tracking_uri='none'.
    Everything a user can get wrong is checked before the first epoch (config, task, data, run
    identity); a run that fails before its first checkpoint leaves no run behind but its error.log."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from repb_ray.data.pipeline import eval_dataset
    from repb_ray.train import runs
    from repb_ray.train.loop import train_loop_per_worker
    from repb_ray.train.pruning import Pruning, PlanDataConfig

    if cfg.name is None:
        cfg = cfg.replace(name=runs.default_name(None, cfg))
    t_start = time.perf_counter()
    check_cluster_paths(cfg)
    task_ref = TaskRef(cfg.task, cfg.task_args)
    instantiate(cfg.task, cfg.task_args)  # a bad task or task_args fails here, before Ray starts
    storage = cfg.storage_path or os.path.join(cfg.output_dir, "ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    state = runs.claim(cfg, resume=resume, overwrite=overwrite, storage=storage)
    pruning = tracker = console = None
    try:
        ensure_ray(cfg, task_runtime_env(cfg.task), verbose)
        task = task_ref.load()
        train_ds = task.train_dataset()
        n = num_samples_of(train_ds)
        if cfg.world_size > n:
            raise DataError(f"num_workers={cfg.num_workers} is larger than the {n} training samples; use fewer workers")
        pruning = Pruning(cfg.policy, num_samples=n, num_workers=cfg.world_size, seed=cfg.seed,
                          shards=cfg.coordinator_shards, storage=storage, name=cfg.name,
                          observe_every=cfg.observe_every, timeout_s=cfg.coordinator_timeout_s,
                          shuffle_rows=cfg.shuffle_rows, prefetch_batches=cfg.prefetch_batches, **cfg.policy_params())
        datasets = {"train": pruning.dataset(train_ds, task_ref)}
        test_ds = eval_dataset(task.test_dataset(), task_ref)
        if test_ds is not None:
            datasets["test"] = test_ds
        tracker = _Tracker(cfg, parent_run_id)
        if progress:
            print(f"[repb_ray] {'resuming' if state == 'resume' else 'run'} {cfg.name}: {cfg.policy} on {cfg.task} "
                  f"({n} samples), {cfg.num_workers} worker(s), {cfg.epochs} epochs; outputs in {cfg.run_dir}",
                  flush=True)
            from repb_ray.train.console import Console
            console = Console(pruning.coordinator, cfg.epochs).start()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.to_dict(), "pruning": pruning.handle, "has_test": test_ds is not None},
            datasets=datasets,
            dataset_config=PlanDataConfig(),
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                                   resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                                         **cfg.worker_resources}),
            run_config=ray.train.RunConfig(
                name=cfg.name, storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=list(callbacks or []) + tracker.callbacks()),
        )
        result = trainer.fit()
        if console:
            console.stop()
            console = None
        history = list(result.return_value or [])
        summary = build_summary(cfg, task, history, num_samples=n, wall_time_s=time.perf_counter() - t_start)
        summary["mlflow_run_id"] = tracker.run_id
        path = os.path.join(cfg.run_dir, "summary.json")
        with open(path, "w") as fh:
            json.dump(summary, fh, indent=2)
        tracker.finish(path, history, summary["metric"], task=task, checkpoint=result.checkpoint,
                       counts=_selection_counts(pruning))
    except BaseException:
        if console:
            console.stop()
        if tracker:
            tracker.end("FAILED")
        if not _has_checkpoint(storage, cfg.name):
            runs.abandon(cfg)
        raise
    finally:
        if pruning:
            pruning.shutdown()
    if progress:
        metric = summary.get("final_metric")
        print(f"[repb_ray] done: final {task.metric} {metric if metric is None else round(metric, 4)}, pruned "
              f"fraction {summary['pruned_fraction']:.3f}, {summary['wall_time_s']:.0f}s; summary: {path}"
              + (f"; MLflow: {mt_redact(tracker.uri)}" if tracker.uri else ""), flush=True)
    return summary


def mt_redact(uri):
    from repb_ray.tracking.mlflow_tracking import redact
    return redact(uri)


def _has_checkpoint(storage: str, name: str) -> bool:
    if "://" in storage:
        return True  # remote storage: keep the run (it may hold checkpoints)
    d = os.path.join(storage, name)
    return os.path.isdir(d) and any(e.startswith("epoch_") for e in os.listdir(d))


def _selection_counts(pruning) -> "np.ndarray | None":
    """N_i: how many epochs' plans held each sample (uint16, id order), from the coordinator."""
    import ray
    try:
        return ray.get(pruning.coordinator.selection_counts.remote(), timeout=120)
    except Exception:
        return None


class _Tracker:
    """The MLflow run of one training job, or nothing when tracking is off."""

    def __init__(self, cfg: Config, parent_run_id: str | None):
        from repb_ray.tracking import mlflow_tracking as mt
        self.mt, self.cfg = mt, cfg
        self.uri = mt.resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)
        self.run_id = None
        if self.uri:
            try:
                self.run_id = mt.start_run(self.uri, cfg.experiment, cfg.output_dir, run_name=cfg.name,
                                           params=cfg.to_dict(), parent_run_id=parent_run_id,
                                           tags={"policy": cfg.policy, "task": cfg.task, **cfg.tags})
            except Exception as exc:
                from repb_ray.config import ConfigError
                from repb_ray.errors import first_line
                raise ConfigError(f"tracking_uri={mt.redact(self.uri)!r} is not usable ({type(exc).__name__}: "
                                  f"{first_line(exc)[:200]}); pass a reachable MLflow server, a SQLite path in an "
                                  "existing directory, or tracking_uri=none") from exc

    def callbacks(self) -> list:
        return [self.mt.epoch_callback(self.uri, self.run_id)] if self.run_id else []

    def finish(self, summary_path: str, history: list, metric: str | None = None, *, task=None, checkpoint=None,
               counts=None) -> None:
        if not self.run_id:
            return
        from repb_ray.plots import run_curves
        self.mt.log_artifact(self.uri, self.run_id, summary_path)
        if history:
            png = run_curves(history, os.path.join(self.cfg.run_dir, "curves.png"), self.cfg.name, metric)
            self.mt.log_artifact(self.uri, self.run_id, png, "plots")
        if counts is not None:
            path = os.path.join(self.cfg.run_dir, "selection_counts.npz")
            np.savez_compressed(path, counts=counts, epochs=np.int64(len(history)))
            self.mt.log_artifact(self.uri, self.run_id, path)
        if task is not None and checkpoint is not None:
            try:
                self.mt.log_model(self.uri, self.run_id, task, checkpoint)
            except Exception as exc:  # the run itself finished: say so, keep its record
                from repb_ray.errors import first_line
                print(f"[repb_ray] MLflow: the model was not logged ({type(exc).__name__}: {first_line(exc)[:160]})",
                      flush=True)
        self.mt.end_run(self.uri, self.run_id, "FINISHED")

    def end(self, status: str) -> None:
        if self.run_id:
            self.mt.end_run(self.uri, self.run_id, status)


PER_EPOCH = ("epoch", "kept", "pruned_fraction", "train_loss", "epoch_time_s", "train_time_s", "data_wait_s",
             "weight_mean", "weight_max", "plan_digest")


def _public_config(cfg: Config) -> dict:
    from repb_ray.tracking.mlflow_tracking import redacted_params
    return redacted_params(cfg.to_dict())


def build_summary(cfg: Config, task, history: list, *, num_samples: int, wall_time_s: float) -> dict:
    key = f"test_{task.metric}"
    values = [h[key] for h in history if key in h]
    best = (max if task.mode == "max" else min)(values) if values else None
    trained = sum(h["kept"] for h in history)
    out = {
        "config": _public_config(cfg), "task": cfg.task, "task_args": dict(cfg.task_args), "policy": cfg.policy,
        "seed": cfg.seed, "num_workers": cfg.num_workers, "epochs": len(history), "num_samples": num_samples,
        "metric": key, "mode": task.mode, "final_metric": values[-1] if values else None, "best_metric": best,
        "pruned_fraction": 1.0 - trained / (len(history) * num_samples) if history else None,
        "samples_trained": trained, "wall_time_s": wall_time_s,
        "per_epoch": [{k: v for k, v in h.items() if k in PER_EPOCH or k.startswith("test_") or k in ("rho", "r", "size")}
                      for h in history],
    }
    if "test_accuracy" in (history[-1] if history else {}):
        out["final_test_accuracy"] = history[-1]["test_accuracy"]
        out["best_test_accuracy"] = max(h["test_accuracy"] for h in history)
    return out


