"""run_sweep: a Ray Tune search whose trials are multi-worker TorchTrainer runs, tracked in MLflow."""

from __future__ import annotations

import json
import math
import os
import time

from repb_ray.config import Config
from repb_ray.tune.report import format_table, pareto_front, plot_pareto, plot_pruned_per_epoch
from repb_ray.tune.spec import SweepSpec


def trial_resources(base: Config, cluster: dict) -> tuple[dict, int, str]:
    """(trial resources, max concurrent trials, explanation). The trial function itself holds no CPU
    (only a token of memory); its Train workers hold theirs, and one CPU is left to Ray Data."""
    cpus = float(cluster.get("CPU", 1))
    per_trial = base.world_size * base.cpus_per_worker
    by_cpu = math.floor((cpus - 1) / per_trial) if cpus - 1 >= per_trial else 0
    limits = [by_cpu]
    if base.use_gpu:
        limits.append(math.floor(cluster.get("GPU", 0) / base.world_size))
    n = max(1, min(limits))
    why = (f"{n} concurrent trial(s): each holds {base.world_size} workers x {base.cpus_per_worker:g} CPU"
           f"{' + 1 GPU' if base.use_gpu else ''}; cluster has {cpus:g} CPUs"
           f"{', %g GPUs' % cluster.get('GPU', 0) if base.use_gpu else ''}, one CPU kept for Ray Data")
    return {"cpu": 0, "memory": 1e6}, n, why


def _make_trial_fn(base: dict, parent_run_id: str | None, trials_dir: str):
    def trial_fn(config: dict) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from repb_ray.train.driver import run_training
        trial_id = tune.get_context().get_trial_id()
        overrides = {k: v for k, v in config.items() if k != "trial"}
        overrides.update({k: v for k, v in config["trial"].items() if k != "_baseline"})
        cfg = Config.from_dict({**base, **overrides, "name": f"trial-{trial_id}", "output_dir": trials_dir,
                                "tags": {**base.get("tags", {}), "trial_id": trial_id}})
        run_training(cfg, callbacks=[TuneReportCallback()], progress=False, parent_run_id=parent_run_id)
    return trial_fn


def run_sweep(spec: SweepSpec) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from repb_ray.tracking import mlflow_tracking as mt
    from repb_ray.train.driver import ensure_ray

    base = spec.base_config()
    out = os.path.abspath(os.path.join(base.output_dir, spec.name))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    ensure_ray(base)
    resources, concurrent, why = trial_resources(base, ray.cluster_resources())
    if spec.max_concurrent_trials:
        concurrent, why = spec.max_concurrent_trials, f"{spec.max_concurrent_trials} concurrent trial(s), as configured"
    print(f"[repb_ray] sweep {spec.name}: {len(spec.grid_trials())} grid trial(s) x {spec.num_samples} sample(s); {why}",
          flush=True)

    uri = mt.resolve_tracking_uri(base.tracking_uri, base.output_dir)
    parent = None
    if uri:
        parent = mt.start_run(uri, base.experiment, base.output_dir, run_name=spec.name,
                              params={"base": spec.base, "search": spec.search, "baselines": spec.baselines,
                                      "num_samples": spec.num_samples, "asha": spec.asha},
                              tags={"sweep": spec.name, "kind": "sweep", **base.tags})
    scheduler = None
    if spec.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                  grace_period=int(spec.asha.get("grace_period", 1)),
                                  reduction_factor=float(spec.asha.get("reduction_factor", 2)))
    tuner = tune.Tuner(
        tune.with_resources(_make_trial_fn({**base.to_dict(), "tracking_uri": uri or "none"}, parent,
                                           os.path.join(out, "trials")), resources),
        param_space={"trial": tune.grid_search(spec.grid_trials()), **spec.random_space()},
        tune_config=tune.TuneConfig(metric="test_accuracy", mode="max", num_samples=spec.num_samples,
                                    max_concurrent_trials=concurrent, scheduler=scheduler),
        run_config=tune.RunConfig(name=spec.name, storage_path=os.path.join(out, "tune"), verbose=1),
    )
    try:
        grid = tuner.fit()
    except BaseException:
        if uri:
            mt.end_run(uri, parent, "FAILED")
        raise
    rows, per_epoch = _collect(grid, base)
    front = pareto_front(rows)
    table = format_table(rows, front)
    print(table, flush=True)
    summary = {"sweep": spec.name, "mlflow_tracking_uri": uri, "mlflow_parent_run_id": parent, "why_concurrency": why,
               "wall_time_s": time.perf_counter() - t0, "trials": rows, "pareto_front": [rows[i]["trial"] for i in front]}
    with open(os.path.join(out, "sweep_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(out, "sweep_table.txt"), "w") as fh:
        fh.write(table + "\n")
    if uri:
        _finish_tracking(mt, uri, parent, base, rows, out, front, per_epoch)
        print(f"[repb_ray] MLflow: mlflow ui --backend-store-uri {uri}", flush=True)
    return summary


def _collect(grid, base: Config) -> tuple[list[dict], dict]:
    rows, per_epoch = [], {}
    for r in grid:
        trial = dict(r.config["trial"])
        cfg = {**base.to_dict(), **{k: v for k, v in r.config.items() if k != "trial"},
               **{k: v for k, v in trial.items() if k != "_baseline"}}
        m = r.metrics or {}
        name = m.get("trial_id") or os.path.basename(r.path.rstrip("/"))[:40]
        df = r.metrics_dataframe
        epochs = int(m.get("epoch", 0))
        if r.error is not None:
            status = "FAILED"
        elif epochs < base.epochs:
            status = "STOPPED"
        else:
            status = "FINISHED"
        rows.append({"trial": name, "policy": cfg["policy"],
                     "rho": cfg["rho"] if cfg["policy"] == "repb" else None,
                     "window": cfg["window"] if cfg["policy"] == "repb" else None,
                     "prune_ratio": cfg["prune_ratio"] if cfg["policy"] in ("infobatch", "random") else None,
                     "status": status, "epochs": epochs, "final_accuracy": m.get("test_accuracy"),
                     "pruned_fraction": m.get("cum_pruned_fraction"), "wall_time_s": m.get("time_total_s"),
                     "error": str(r.error)[:500] if r.error is not None else None})
        if df is not None and "pruned_fraction" in df:
            per_epoch[name] = [float(v) for v in df["pruned_fraction"].tolist()]
    return rows, per_epoch


def _finish_tracking(mt, uri, parent, base, rows, out, front, per_epoch) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(base.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
    by_trial = {c.data.tags.get("trial_id"): c for c in children}
    for row in rows:
        child = by_trial.get(row["trial"])
        if child is not None and child.info.status == "RUNNING":  # stopped by ASHA or died: record it
            mt.end_run(uri, child.info.run_id, "KILLED" if row["status"] == "STOPPED" else "FAILED")
        if child is not None:
            client.set_tag(child.info.run_id, "sweep_status", row["status"])
    mt.log_artifact(uri, parent, os.path.join(out, "sweep_summary.json"))
    mt.log_artifact(uri, parent, os.path.join(out, "sweep_table.txt"))
    mt.log_artifact(uri, parent, plot_pareto(rows, front, os.path.join(out, "pareto.png")), "plots")
    mt.log_artifact(uri, parent, plot_pruned_per_epoch(per_epoch, os.path.join(out, "pruned_per_epoch.png")), "plots")
    best = max((r for r in rows if r["final_accuracy"] is not None), key=lambda r: r["final_accuracy"], default=None)
    if best:
        mt.log_epoch_metrics(uri, parent, {"best_final_accuracy": best["final_accuracy"],
                                           "best_pruned_fraction": best["pruned_fraction"]}, step=0)
    mt.end_run(uri, parent, "FINISHED")
