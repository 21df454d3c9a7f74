"""run_sweep: a Ray Tune search whose trials are multi-worker TorchTrainer runs, tracked in MLflow, with
the paper's table and plot at the end. Runs in the driver; each trial's driver runs in a Tune actor."""

from __future__ import annotations

import json
import math
import os
import time

from repb_ray.config import Config
from repb_ray.tune.report import (aggregate, format_table, label_trials, paper_table, pareto_front,
                                  plot_metric_vs_pruned, plot_pareto, plot_pruned_per_epoch)
from repb_ray.tune.spec import SweepSpec

TRIAL_RESOURCES = {"cpu": 0, "memory": 1e6}  # the trial function itself holds no CPU; its Train workers do


def capacity(base: Config, cluster: dict) -> tuple[int, str]:
    """How many trials the cluster's resources hold now: each needs its workers' CPUs (and GPUs),
    one CPU stays free for Ray Data; at least one (its pending workers make an autoscaler add nodes)."""
    cpus = float(cluster.get("CPU", 0))
    per_trial = base.world_size * base.cpus_per_worker
    limits = [math.floor((cpus - 1) / per_trial) if cpus - 1 >= per_trial else 0]
    if base.use_gpu:
        limits.append(math.floor(cluster.get("GPU", 0) / base.world_size))
    for name, amount in base.worker_resources.items():  # e.g. the nodes that may hold Train workers
        if amount > 0:
            limits.append(math.floor(cluster.get(name, 0) / (base.world_size * amount)))
    n = max(1, min(limits))
    why = (f"{n} trial(s) at once: each holds {base.world_size} workers x {base.cpus_per_worker:g} CPU"
           f"{' + 1 GPU' if base.use_gpu else ''}; the cluster has {cpus:g} CPUs"
           f"{', %g GPUs' % cluster.get('GPU', 0) if base.use_gpu else ''} now, one kept for Ray Data")
    return n, why


def _searcher_class():
    from ray.tune.search import Searcher

    class Admission(Searcher):
        """Hands out the sweep's trials in order, only while the running ones fit the cluster's
        resources as they are now (re-read every time Tune asks), or the configured cap."""

        def __init__(self, trials: list[dict], base: Config, cap: int | None, log):
            super().__init__()
            self.trials, self.base, self.cap, self.log = trials, base, cap, log
            self.next, self.running, self.last_why = 0, set(), None

        def suggest(self, trial_id: str):
            import ray
            if self.next >= len(self.trials):
                return Searcher.FINISHED
            if self.cap is not None:
                limit, why = self.cap, f"{self.cap} trial(s) at once, as configured"
            else:
                limit, why = capacity(self.base, ray.cluster_resources())
            if why != self.last_why:
                self.last_why = why
                self.log(why)
            if len(self.running) >= limit:
                return None  # asked again later: trials start as resources appear
            self.running.add(trial_id)
            self.next += 1
            return {"trial": self.trials[self.next - 1], "index": self.next - 1}

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
            self.running.discard(trial_id)

    return Admission


def progress_line(done: int, total: int, elapsed_s: float, what: str, status: str, metric: str,
                  value, pruned) -> str:
    """One plain line per ended trial: count, what it was, its result, and the time left at this pace."""
    left = (total - done) * elapsed_s / done if done else float("nan")
    result = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {metric}"
    if isinstance(pruned, (int, float)):
        result += f", {100 * pruned:.1f}% pruned"
    return (f"trial {done}/{total} {status.lower()}: {what}: {result} "
            f"({elapsed_s / 60:.1f} min so far, about {left / 60:.0f} min left)")


def _progress_callback(sweep_trials: list[dict], labels: list, metric: str, log):
    from ray import tune

    class Progress(tune.Callback):
        """Prints progress_line as each trial ends (the sweep's console, with Tune's own table off)."""

        def __init__(self):
            self.t0, self.done = time.perf_counter(), 0

        def _ended(self, trial, status: str) -> None:
            self.done += 1
            index = (trial.config or {}).get("index")
            what = "?"
            if index is not None:
                keys = ", ".join(f"{k}={v}" for k, v in sweep_trials[index].items() if k != "policy")
                what = labels[index][0] + (f" ({keys})" if keys else "")
            r = trial.last_result or {}
            log(progress_line(self.done, len(sweep_trials), time.perf_counter() - self.t0, what, status, metric,
                              r.get(metric), r.get("cum_pruned_fraction")))

        def on_trial_complete(self, iteration, trials, trial, **info):  # Tune passes these by keyword
            self._ended(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial, "FAILED")

    return Progress()


def _make_trial_fn(base: dict, parent_run_id: str | None, trials_dir: str):
    def trial_fn(config: dict) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from repb_ray.train.driver import run_training
        trial_id = tune.get_context().get_trial_id()
        cfg = Config.from_dict({**base, **config["trial"], "name": f"trial-{trial_id}", "output_dir": trials_dir,
                                "tags": {**base.get("tags", {}), "trial_id": trial_id}})
        run_training(cfg, callbacks=[TuneReportCallback()], progress=False, parent_run_id=parent_run_id)
    return trial_fn


def run_sweep(spec: SweepSpec, verbose: bool = False) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from repb_ray.task import import_task_class
    from repb_ray.tracking import mlflow_tracking as mt
    from repb_ray.train.driver import check_cluster_paths, ensure_ray, task_runtime_env

    base = spec.base_config()
    check_cluster_paths(base)
    task_cls = import_task_class(base.task)
    metric, mode = f"test_{task_cls.metric}", task_cls.mode
    out = os.path.abspath(os.path.join(base.output_dir, spec.name))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    ensure_ray(base, task_runtime_env(base.task), verbose)
    trials = spec.trials()
    labels = label_trials(trials)

    def log(text):
        print(f"[repb_ray] sweep {spec.name}: {text}", flush=True)
    log(f"{len(trials)} trial(s), metric {metric} ({mode})")

    uri = mt.resolve_tracking_uri(base.tracking_uri, base.output_dir)
    parent = None
    if uri:
        parent = mt.start_run(uri, base.experiment, base.output_dir, run_name=spec.name,
                              params={"base": spec.base, "search": spec.search, "grids": spec.grids,
                                      "baselines": spec.baselines, "seeds": spec.seeds,
                                      "num_samples": spec.num_samples, "asha": spec.asha},
                              tags={"sweep": spec.name, "kind": "sweep", **base.tags})
    scheduler = None
    if spec.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                  grace_period=int(spec.asha.get("grace_period", 1)),
                                  reduction_factor=float(spec.asha.get("reduction_factor", 2)))
    searcher = _searcher_class()(trials, base, spec.max_concurrent_trials, log)
    tuner = tune.Tuner(
        tune.with_resources(_make_trial_fn({**base.to_dict(), "tracking_uri": uri or "none"}, parent,
                                           os.path.join(out, "trials")), TRIAL_RESOURCES),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=len(trials), search_alg=searcher,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(name=spec.name, storage_path=os.path.join(out, "tune"), verbose=0,
                                  callbacks=[_progress_callback(trials, labels, metric, log)]),
    )
    try:
        grid = tuner.fit()
    except BaseException:
        if uri:
            mt.end_run(uri, parent, "FAILED")
        raise
    rows, per_epoch = _collect(grid, base, trials, labels, metric)
    front = pareto_front(rows, mode)
    table = format_table(rows, front)
    agg = aggregate(rows)
    paper = paper_table(agg, task_cls.metric, mode)
    print(table + "\n\n" + paper, flush=True)
    summary = {"sweep": spec.name, "metric": metric, "mode": mode, "mlflow_tracking_uri": mt.redact(uri),
               "mlflow_parent_run_id": parent, "wall_time_s": time.perf_counter() - t0, "trials": rows,
               "pareto_front": [rows[i]["trial"] for i in front],
               "table": [{"method": m, "budget": b, **c} for (m, b), c in sorted(agg["cells"].items(), key=str)],
               "full_data": agg["full"]}
    files = {"sweep_summary.json": json.dumps(summary, indent=2), "sweep_table.txt": table + "\n",
             "paper_table.md": paper + "\n"}
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as fh:
            fh.write(text)
    plots = [plot_pareto(rows, front, os.path.join(out, "pareto.png"), task_cls.metric),
             plot_pruned_per_epoch(per_epoch, os.path.join(out, "pruned_per_epoch.png")),
             plot_metric_vs_pruned(agg, task_cls.metric, os.path.join(out, "metric_vs_pruned.png"), spec.name)]
    if uri:
        _finish_tracking(mt, uri, parent, base, rows, out, list(files), plots)
        log(f"MLflow: mlflow ui --backend-store-uri {mt.redact(uri)}")
    log(f"results in {out}")
    return summary


def _collect(grid, base: Config, trials: list[dict], labels: list, metric: str) -> tuple[list[dict], dict]:
    rows, per_epoch = [], {}
    for r in grid:
        index = r.config.get("index")
        overrides = trials[index] if index is not None else {}
        method, budget = labels[index] if index is not None else ("?", None)
        cfg = {**base.to_dict(), **overrides}
        m = r.metrics or {}
        name = os.path.basename(r.path.rstrip("/"))[:40] if r.path else str(index)
        epochs = int(m.get("epoch", 0))
        status = "FAILED" if r.error is not None else ("STOPPED" if epochs < base.epochs else "FINISHED")
        rows.append({"trial": name, "index": index, "method": method, "budget": budget, "seed": cfg["seed"],
                     "policy": cfg["policy"], "target_pruned": cfg.get("target_pruned"), "status": status,
                     "epochs": epochs, "metric": m.get(metric), "pruned_fraction": m.get("cum_pruned_fraction"),
                     "wall_time_s": m.get("time_total_s"), "trial_id": m.get("trial_id"),
                     "error": str(r.error)[:500] if r.error is not None else None})
        df = r.metrics_dataframe
        if df is not None and "pruned_fraction" in df:
            per_epoch[f"{method} {budget} s{cfg['seed']}"] = [float(v) for v in df["pruned_fraction"].tolist()]
    rows.sort(key=lambda row: row["index"] if row["index"] is not None else 1 << 30)
    return rows, per_epoch


def _finish_tracking(mt, uri, parent, base, rows, out, files, plots) -> None:
    client = mt.client(uri)
    exp = client.get_experiment_by_name(base.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
    by_trial = {c.data.tags.get("trial_id"): c for c in children}
    for row in rows:
        child = by_trial.get(row["trial_id"])
        if child is not None and child.info.status == "RUNNING":  # stopped by ASHA or died: record it
            mt.end_run(uri, child.info.run_id, "KILLED" if row["status"] == "STOPPED" else "FAILED")
        if child is not None:
            client.set_tag(child.info.run_id, "sweep_status", row["status"])
            client.set_tag(child.info.run_id, "method", row["method"])
    for name in files:
        mt.log_artifact(uri, parent, os.path.join(out, name))
    for png in plots:
        mt.log_artifact(uri, parent, png, "plots")
    finished = [r for r in rows if r["metric"] is not None]
    if finished:
        mt.log_epoch_metrics(uri, parent, {"trials_finished": len(finished)}, step=0)
    mt.end_run(uri, parent, "FINISHED")
