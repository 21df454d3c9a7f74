"""The driver of one training run: Ray set-up, data, coordinator, TorchTrainer, summary.json."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from repb_ray.config import Config


def local_ray_cpus(cfg: Config) -> int:
    """Logical CPUs for a local Ray: the machine's, but at least the workers' plus two for Ray Data
    tasks (with every CPU held by Train workers, Ray Data's filter tasks never get scheduled)."""
    need = int(np.ceil(cfg.world_size * cfg.cpus_per_worker)) + 2
    return max(os.cpu_count() or 1, need)


def ensure_ray(cfg: Config) -> None:
    """Connect to RAY_ADDRESS when set, else start a private local Ray bound to 127.0.0.1."""
    import ray
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=local_ray_cpus(cfg), include_dashboard=False, log_to_driver=True)


def _data(cfg: Config):
    from repb_ray.data.arrays import load_dataset
    train, test = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                               synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    return train.subset(cfg.train_subset), test.subset(cfg.test_subset)


def run_training(cfg: Config, *, callbacks: list | None = None, progress: bool = True,
                 parent_run_id: str | None = None) -> dict:
    """Train per `cfg`; returns the summary (also written to run_dir/summary.json). The run is
    tracked in MLflow (one run, nested under `parent_run_id` when given) unless tracking_uri='none'."""
    import ray
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from repb_ray.data.ray_epochs import base_dataset, epoch_pipeline
    from repb_ray.train.coordinator import Coordinator
    from repb_ray.train.loop import train_loop_per_worker

    if cfg.name is None:
        cfg = cfg.replace(name=time.strftime("run-%Y%m%d-%H%M%S"))
    t_start = time.perf_counter()
    ensure_ray(cfg)
    train, test = _data(cfg)
    if cfg.world_size > len(train):
        raise ValueError(f"num_workers={cfg.num_workers} is larger than the {len(train)} training samples")
    os.makedirs(cfg.run_dir, exist_ok=True)
    storage = cfg.storage_path or os.path.abspath(os.path.join(cfg.output_dir, "ray_results"))
    if "://" not in storage:
        storage = os.path.abspath(storage)
    coord = Coordinator.create(cfg.policy, len(train), cfg.seed, cfg.world_size, cfg.policy_params())
    pipeline = epoch_pipeline(base_dataset(train, seed=cfg.seed), coord, seed=cfg.seed)
    tracker = _Tracker(cfg, parent_run_id)
    callbacks = list(callbacks or []) + tracker.callbacks()
    if progress:
        print(f"[repb_ray] run {cfg.name}: {cfg.policy} on {cfg.dataset} ({len(train)} samples), "
              f"{cfg.num_workers} workers, {cfg.epochs} epochs; storage {storage}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "coordinator": coord, "num_samples": len(train),
                           "test_ref": ray.put(test), "input_shape": tuple(train.x.shape[1:])},
        datasets={"train": pipeline},
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True),
                                            enable_shard_locality=False),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks + ([progress_callback()] if progress else [])),
    )
    try:
        result = trainer.fit()
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        ray.kill(coord)
    history = list(result.return_value or [])
    summary = build_summary(cfg, history, num_samples=len(train), wall_time_s=time.perf_counter() - t_start)
    summary["mlflow_run_id"] = tracker.run_id
    path = os.path.join(cfg.run_dir, "summary.json")
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2)
    tracker.finish(path, history)
    if progress:
        print(f"[repb_ray] done: final accuracy {summary['final_test_accuracy']:.4f}, pruned fraction "
              f"{summary['pruned_fraction']:.3f}, {summary['wall_time_s']:.0f}s; summary: {path}"
              + (f"; MLflow: {tracker.uri}" if tracker.uri else ""), flush=True)
    return summary


class _Tracker:
    """The MLflow run of one training job, or nothing when tracking is off."""

    def __init__(self, cfg: Config, parent_run_id: str | None):
        from repb_ray.tracking import mlflow_tracking as mt
        self.mt, self.cfg = mt, cfg
        self.uri = mt.resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)
        self.run_id = None
        if self.uri:
            self.run_id = mt.start_run(self.uri, cfg.experiment, cfg.output_dir, run_name=cfg.name,
                                       params=cfg.to_dict(), parent_run_id=parent_run_id,
                                       tags={"policy": cfg.policy, "dataset": cfg.dataset, **cfg.tags})

    def callbacks(self) -> list:
        return [self.mt.epoch_callback(self.uri, self.run_id)] if self.run_id else []

    def finish(self, summary_path: str, history: list) -> None:
        if not self.run_id:
            return
        from repb_ray.plots import run_curves
        self.mt.log_artifact(self.uri, self.run_id, summary_path)
        if history:
            png = run_curves(history, os.path.join(self.cfg.run_dir, "curves.png"), self.cfg.name)
            self.mt.log_artifact(self.uri, self.run_id, png, "plots")
        self.mt.end_run(self.uri, self.run_id, "FINISHED")

    def end(self, status: str) -> None:
        if self.run_id:
            self.mt.end_run(self.uri, self.run_id, status)


def build_summary(cfg: Config, history: list, *, num_samples: int, wall_time_s: float) -> dict:
    keys = ("epoch", "kept", "pruned_fraction", "train_loss", "test_accuracy", "epoch_time_s", "train_time_s",
            "weight_mean", "weight_max", "plan_digest")
    accs = [h["test_accuracy"] for h in history]
    trained = sum(h["kept"] for h in history)
    return {
        "config": cfg.to_dict(), "policy": cfg.policy, "seed": cfg.seed, "num_workers": cfg.num_workers,
        "epochs": len(history), "num_samples": num_samples,
        "final_test_accuracy": accs[-1] if accs else None, "best_test_accuracy": max(accs) if accs else None,
        "pruned_fraction": 1.0 - trained / (len(history) * num_samples) if history else None,
        "samples_trained": trained, "wall_time_s": wall_time_s,
        "per_epoch": [{k: h[k] for k in keys} for h in history],
    }


def progress_callback():
    """A ray.train.UserCallback printing one line per epoch (it runs in the Train controller)."""
    import ray.train

    class ProgressCallback(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0] if metrics else {}
            if m:
                print(f"[repb_ray] epoch {m['epoch']}: acc {m['test_accuracy']:.4f} loss {m['train_loss']:.4f} "
                      f"kept {m['kept']} (pruned {m['pruned_fraction']:.1%}, cum {m['cum_pruned_fraction']:.1%}) "
                      f"w_max {m['weight_max']:.2f} {m['epoch_time_s']:.1f}s", flush=True)
    return ProgressCallback()
