"""run_training: one training run from its config, in the driver: checks, the run's identity, the
task's datasets, the coordinator, the TorchTrainer, the console and tracking, summary.json. Runs in
the process that calls `repb-ray train` (or a Tune trial)."""

from __future__ import annotations

import _thread
import json
import os
import threading
import time

import ray
import ray.train
from ray.train.torch import TorchTrainer

from repb_ray import storage
from repb_ray.code_version import code_version
from repb_ray.config import Config
from repb_ray.core.registry import policy_class
from repb_ray.data.pipeline import eval_dataset
from repb_ray.errors import DataError, OwnershipLost, RunError
from repb_ray.redact import redact, redact_text
from repb_ray.tasks.loader import TaskRef, instantiate
from repb_ray.tracking import mlflow_tracking as mt
from repb_ray.tracking.run_tracker import RunTracker
from repb_ray.train import run_home
from repb_ray.train.console import Console
from repb_ray.train.failures import RetryGuard
from repb_ray.train.loop import train_loop_per_worker
from repb_ray.train.messages import CHECKPOINT_KEEP
from repb_ray.train.pruning import Pruning
from repb_ray.train.ray_env import (
    check_cluster_paths,
    check_data_visible,
    check_resources,
    check_shared_paths,
    ensure_ray,
    num_samples_of,
    task_runtime_env,
)
from repb_ray.train.summary import build_summary, time_spent


def run_training(cfg: Config, *, callbacks: list | None = None, progress: bool = True,
                 parent_run_id: str | None = None, resume: bool = False, overwrite: bool = False,
                 verbose: bool = False, check_paths: bool = True, lease_wait_s: float = 0.0) -> dict:
    """Train per `cfg`; returns the summary (also written to run_dir/summary.json). The run is
    tracked in MLflow (one run, nested under `parent_run_id` when given) unless tracking_uri='none'.
    Everything a user can get wrong is checked before the first epoch (config, task, data, run
    identity); a run that fails before its first checkpoint leaves no run behind but its error.log.
    lease_wait_s: how long a live-looking holder of the run's lease is waited for before refusing."""
    if cfg.name is None:
        cfg = cfg.replace(name=run_home.default_name(None, cfg))
    t_start, moments = time.perf_counter(), {"started": time.time()}  # wall-clock moments: workers' are compared
    code_version()  # the code as this driver started it, for the summary (the files may change while it runs)
    check_cluster_paths(cfg)
    task_ref = TaskRef(cfg.task, cfg.task_args)
    instantiate(cfg.task, cfg.task_args)  # a bad task or task_args fails here, before Ray starts
    tracking_uri = mt.resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)
    if tracking_uri:
        mt.prepare_client_env()
        mt.check_reachable(tracking_uri)  # one line within seconds, before Ray starts
    claim = run_home.claim(cfg, resume=resume, overwrite=overwrite, lease_wait_s=lease_wait_s)
    root = run_home.storage_root(cfg)
    pruning = tracker = console = None
    claim.owner.on_lost.append(_stopper(lambda: pruning, threading.current_thread() is threading.main_thread()))
    try:
        ensure_ray(cfg, task_runtime_env(cfg.task), verbose)
        if check_paths:
            check_shared_paths(cfg)
        task = task_ref.load()
        train_ds = task.train_dataset()
        n = num_samples_of(train_ds)
        if cfg.world_size > n:
            raise DataError(f"num_workers={cfg.num_workers} is larger than the {n} training samples; use fewer workers")
        check_resources(cfg, n)
        if check_paths:
            check_data_visible(train_ds)
        pruning = _pruning(cfg, n, claim)
        datasets = {"train": pruning.dataset(train_ds, task_ref)}
        raw_test = task.test_dataset()
        test_ds = eval_dataset(raw_test, task_ref)
        if test_ds is not None:
            datasets["test"] = test_ds
        tracker = RunTracker(cfg, parent_run_id=parent_run_id, resume_run_id=claim.record.get("mlflow_run_id"),
                             uri=tracking_uri or "")
        if tracker.run_id:
            claim.save_record(mlflow_run_id=tracker.run_id)
            tracker.datasets(_dataset_records(cfg, train_ds, n, raw_test))
        if progress:
            print(f"[repb_ray] {'resuming' if claim.state == 'resume' else 'run'} {cfg.name}: {cfg.policy} on {cfg.task} "
                  f"({n} samples), {cfg.num_workers} worker(s), {cfg.epochs} epochs; outputs in {cfg.run_dir}",
                  flush=True)
        console = Console(pruning.progress, cfg.epochs, show=progress, decisions=policy_class(cfg.policy).DECISIONS,
                          on_epoch=tracker.epoch).start()
        trainer = _trainer(cfg, pruning, datasets, root, callbacks)
        moments["fit_start"] = time.time()
        result = trainer.fit()
        moments["fit_end"] = time.time()
        console.stop()
        console = None
        summary, path = _finish(cfg, task, result, n, t_start, moments, tracker, pruning,
                                log_model=model_logging(cfg.log_model, in_sweep=parent_run_id is not None))
        claim.finish()
    except BaseException as exc:
        if console:
            console.stop()
        if tracker:
            tracker.end("FAILED")
        _cleanup_failed(claim)
        if claim.owner.lost:  # whatever stopped the workers, this is why
            raise OwnershipLost(f"run {cfg.name!r}: {claim.owner.lost}; this driver stopped it and deleted "
                                "nothing") from exc
        repeated = _repeated_failure(exc)
        if repeated is not None:
            raise RunError(f"run {cfg.name!r} {repeated}") from exc
        raise
    finally:
        if pruning:
            pruning.shutdown()
        claim.release()
    if progress:
        metric = summary.get("final_metric")
        print(f"[repb_ray] done: final {task.metric} {metric if metric is None else round(metric, 4)}, pruned "
              f"fraction {summary['pruned_fraction']:.3f}, {summary['wall_time_s']:.0f}s; summary: {path}"
              + (f"; MLflow: {tracker.safe_uri}" if tracker.uri else ""), flush=True)
    return summary


def _pruning(cfg: Config, n: int, claim: run_home.RunClaim) -> Pruning:
    """The run's coordinator (and progress board), its states in the run's home under its owner's fence."""
    return Pruning(cfg.policy, cfg.policy_params(), num_samples=n, num_workers=cfg.world_size, seed=cfg.seed,
                   shards=cfg.coordinator_shards, home=claim.home, fence=claim.owner.fence,
                   observe_every=cfg.observe_every, timeout_s=cfg.coordinator_timeout_s,
                   shuffle_rows=cfg.shuffle_rows)


def _trainer(cfg: Config, pruning: Pruning, datasets: dict, root: str, callbacks: list | None) -> TorchTrainer:
    """The run's TorchTrainer: the worker loop, the pruned datasets, the scaling, and the run's home as
    Ray Train's storage (its filesystem, a URI's query kept, and the path)."""
    fs, path = storage.filesystem(root)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": worker_config(cfg), "pruning": pruning.handle, "has_test": "test" in datasets},
        datasets=datasets,
        dataset_config=pruning.data_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling_workers(), use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                                     **cfg.worker_resources},
                                               elastic_resize_monitor_interval_s=cfg.resize_check_s),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # the last two epoch-end checkpoints and the latest (one within an epoch continues only at its own
            # world size: at another, the run goes back to the epoch's start)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=CHECKPOINT_KEEP,
                                                         checkpoint_score_order="max"),
            callbacks=[RetryGuard(pruning.coordinator), *(callbacks or [])]),
    )


def model_logging(log_model: str, *, in_sweep: bool) -> str:
    """How the final model is logged: `log_model` as configured, auto resolved (weights in a sweep's trial,
    where exporting each trial's model would cost seconds per trial, else export)."""
    if log_model != "auto":
        return log_model
    return "weights" if in_sweep else "export"


def _finish(cfg: Config, task, result, n: int, t_start: float, moments: dict, tracker: RunTracker,
            pruning: Pruning, *, log_model: str) -> tuple:
    """summary.json of the ended run, and tracking completed with it (the model, the selection counts),
    then again with the whole run's wall time and where it went; returns (summary, its path)."""
    history = list(result.return_value or [])
    summary = build_summary(cfg, task, history, num_samples=n, wall_time_s=time.perf_counter() - t_start)
    path = run_home.layout_of(cfg).summary
    summary["mlflow_run_id"] = tracker.run_id
    _write_json(path, summary)
    model = _final_model(task, result.checkpoint) if tracker.run_id and log_model != "none" else None
    example = task.input_example() if log_model == "export" else None  # without an example: the weights
    summary["tracking"] = tracker.finish(path, history, summary["metric"], model=model, example=example,
                                         counts=_selection_counts(pruning))
    summary["wall_time_s"] = time.perf_counter() - t_start
    summary["time_s"] = time_spent(history, {**moments, "ended": time.time()})
    _write_json(path, summary)
    tracker.log_summary(path)
    return summary, path


def _dataset_records(cfg: Config, train_ds, n: int, test_ds) -> dict:
    """The MLflow dataset records of the train data (n rows) and the test data (counted; small)."""
    from repb_ray.tracking.datasets import describe
    out = {"train": describe(train_ds, name=f"{cfg.task}-train", context="training", num_rows=n, task=cfg.task,
                             task_args=cfg.task_args)}
    if test_ds is not None:
        out["test"] = describe(test_ds, name=f"{cfg.task}-test", context="evaluation", num_rows=test_ds.count(),
                               task=cfg.task, task_args=cfg.task_args)
    return out


def _repeated_failure(exc: BaseException) -> str | None:
    """The one line of a failure the RetryGuard stopped because it repeated (None for any other error)."""
    from repb_ray.errors import causes
    from repb_ray.train.failures import StopRetrying
    return next((e.repeated for e in causes(exc) if isinstance(e, StopRetrying)), None)


def _stopper(pruning_of, main_thread: bool):
    """What stops this run when its driver loses ownership (from the heartbeat thread): the coordinator
    goes, so every worker fails at its next call, and the main thread is interrupted (a sweep trial's
    thread is not the main thread: the coordinator alone stops it)."""
    def stop() -> None:
        pruning = pruning_of()
        if pruning is not None:
            pruning.shutdown()
        if main_thread:
            _thread.interrupt_main()
    return stop


def _cleanup_failed(claim: run_home.RunClaim) -> None:
    """After a failure: a run that has no checkpoint yet leaves nothing behind but its error.log. A
    driver that lost its run, or cannot list the home, deletes nothing."""
    if claim.owner.lost:
        return
    try:
        if not claim.has_checkpoint():
            claim.abandon()
    except Exception as exc:  # noqa: BLE001 - any doubt keeps the files
        print(f"[repb_ray] warning: kept {storage.display(claim.home)} as it is: could not tell what this run wrote "
              f"({type(exc).__name__}: {redact_text(str(exc))[:160]})", flush=True)


def worker_config(cfg: Config) -> dict:
    """The config the Train workers get: no tracking URI, no storage location (the workers use
    neither; the coordinator alone knows where its states go), anything else redacted."""
    return redact({**cfg.to_dict(), "tracking_uri": None, "storage_path": None})


def _write_json(path: str, data: dict) -> None:
    storage.write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _final_model(task, checkpoint):
    """The task's model with the last checkpoint's weights (loaded as plain tensors)."""
    if checkpoint is None:
        return None
    from repb_ray.train.checkpoint import MODEL, load_tensors
    model = task.model()
    with checkpoint.as_directory() as d:
        model.load_state_dict(load_tensors(os.path.join(d, MODEL)))
    return model


def _selection_counts(pruning):
    """N_i: how many epochs' plans held each sample (uint16, id order), from the coordinator."""
    try:
        return ray.get(pruning.coordinator.selection_counts.remote(), timeout=120)
    except Exception:
        return None
