"""run_sweep: a Ray Tune search whose trials are multi-worker TorchTrainer runs, tracked in MLflow, with
the paper's tables and plots at the end. The same command continues an interrupted sweep (Tune's own
restore): finished trials are kept, running ones resume from their checkpoints (a trial's name is its
place in the sweep and its seed), and MLflow holds every trial once. Runs in the driver; each
trial's driver runs in a Tune actor."""

from __future__ import annotations

import _thread
import os
import threading
import time
from dataclasses import dataclass

from ray import tune

from repb_ray import layout, storage
from repb_ray.config import Config, ConfigError, apply_overrides
from repb_ray.credentials import tracking_credentials
from repb_ray.errors import RunError
from repb_ray.layout import OWNER_DIR, TRIALS_DIR
from repb_ray.redact import redact, redact_text
from repb_ray.train import run_home
from repb_ray.train.ownership import HEARTBEAT_S, STALE_S, Ownership
from repb_ray.tune import state_digest
from repb_ray.tune.admission import Admission, TrialDemand, capacity
from repb_ray.tune.progress import TERMINAL, Progress
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.state_digest import StateDigest
from repb_ray.tune.tables import build_report, label_trials, mixed_code

TRIAL_RESOURCES = {"cpu": 0, "memory": 1e6}  # the trial function itself holds no CPU; its Train workers do
TUNE_DIR = "tune"
TRIAL_LEASE_WAIT_S = STALE_S + HEARTBEAT_S  # a restarted trial waits this long for its earlier driver to go stale
REPORTS = ("sweep_summary.json", "sweep_table.txt", "paper_table.md", "metric_vs_pruned.png", "pareto.png",
           "pruned_per_epoch.png", "knobs.png")


class SweepLog:
    """The sweep's console lines. A small object, not a closure: Tune pickles its searcher (which logs)
    into the sweep's state on disk, and a closure would carry the whole sweep spec, credentials included."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, text: str) -> None:
        print(f"[repb_ray] sweep {self.name}: {redact_text(text)}", flush=True)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every trial ended (Ctrl-C): the same command continues it."""


def trial_names(trials: list[dict], base: Config) -> list[str]:
    """Each trial's run name: its place in the sweep and its seed (stable across restarts)."""
    return [f"t{i:03d}-s{t.get('seed', base.seed)}" for i, t in enumerate(trials)]


def optuna_name(trial_id: str) -> str:
    """An Optuna trial's run name: Tune's trial id, which a restored sweep keeps."""
    return f"optuna-{trial_id}"


def describe_trials(trials: list[dict], labels: list, names: list[str]) -> list[str]:
    """One short description per trial for the console: its method, budget, seed and run name."""
    out = []
    for t, (method, budget), name in zip(trials, labels, names):
        bits = [f"{budget:.0%} budget" if isinstance(budget, float) and budget else "", f"seed {t['seed']}"
                if "seed" in t else ""]
        out.append(f"{method}" + "".join(f", {b}" for b in bits if b) + f" [{name}]")
    return out


@dataclass(frozen=True)
class TrialContext:
    """What every trial's driver needs. It reaches the trials through the object store
    (tune.with_parameters), never Tune's experiment state on disk: the tracking URI may hold credentials."""

    base: dict
    tracking_uri: str | None
    parent_run_id: str | None
    trials_dir: str
    names: tuple
    home: str                      # the sweep's home: each trial's is home/TRIAL
    tracking_env: dict             # MLflow's credentials for the trial's driver (never on disk)


def run_trial(config: dict, context: TrialContext) -> None:
    """One trial (in its Tune actor): the run of its overrides, named by its place in the sweep. A
    restored sweep restarts the trials its saved state still had running; one whose run had already
    ended (the driver died between the run's end and Tune's next save) is not trained again: Tune gets
    its final epoch from summary.json. (A run resumed from its last checkpoint reports its final epoch
    again itself: train/loop.py.) The sweep's own ownership makes this the only driver of its trials, so a
    trial's run held by a driver that still looks alive is its earlier incarnation, dying or dead on
    another host: waited for until its heartbeat goes stale."""
    from repb_ray.credentials import apply_tracking_credentials
    from repb_ray.train.driver import run_training
    from repb_ray.tune.reporter import train_and_report
    apply_tracking_credentials(context.tracking_env)
    index = config.get("index")
    name = context.names[index] if index is not None else optuna_name(tune.get_context().get_trial_id())
    cfg = Config.from_dict({**apply_overrides(context.base, config["trial"]), "name": name,
                            "output_dir": context.trials_dir, "storage_path": context.home,
                            "tracking_uri": context.tracking_uri or "none",
                            "tags": {**context.base.get("tags", {}), "sweep_trial": name}})
    summary = run_home.finished_summary(cfg)
    if summary is not None:
        tune.report(final_epoch(summary))
        return
    train_and_report(lambda reporter: run_training(cfg, callbacks=[reporter], progress=False,
                                                   parent_run_id=context.parent_run_id, check_paths=False,
                                                   lease_wait_s=TRIAL_LEASE_WAIT_S))


def final_epoch(summary: dict) -> dict:
    """A run's last epoch as Tune gets each epoch (its row of summary.json: metrics, pruned fraction)."""
    if not summary.get("per_epoch"):
        raise RunError(f"run {summary.get('config', {}).get('name')!r} ended without an epoch to report")
    return dict(summary["per_epoch"][-1])


class SweepClaim:
    """The sweep for this invocation: its home STORAGE/SWEEP (ownership, its record, its trials'
    homes) and its output folder OUTPUT/SWEEP (sweep.json, Tune's state, the reports)."""

    def __init__(self, spec: SweepSpec, base: Config, out: str, overwrite: bool):
        self.out, self.record_path = out, os.path.join(out, layout.SWEEP_FILE)
        self.home = storage.join(run_home.storage_root(base), spec.name)
        if os.path.exists(os.path.join(out, "run.json")) or os.path.exists(os.path.join(out, layout.SUMMARY_FILE)):
            raise ConfigError(f"{out} is the folder of a training run; give the sweep another name (--set sweep.name=...)")
        mine = {layout.SWEEP_FILE, TUNE_DIR, TRIALS_DIR, *REPORTS}
        if overwrite and os.path.isdir(out) and os.listdir(out) and not os.path.exists(self.record_path):
            raise ConfigError(f"--overwrite: {out} is not a sweep's folder (no {layout.SWEEP_FILE}); repb_ray deletes only "
                                  "what its sweeps wrote: give the sweep another name (--set sweep.name=...)")
        run_home.check_home(self.home, spec.name, what="sweep")
        self.owner = Ownership(self.home, spec.name, what="sweep").acquire()
        try:
            os.makedirs(out, exist_ok=True)
            if overwrite:
                self._clear(mine)
            self.record = storage.read_json(self.record_path) if os.path.exists(self.record_path) else None
            if self.record is not None and self.record.get("fingerprint") != spec.fingerprint():
                raise ConfigError(f"sweep {spec.name!r} in {os.path.dirname(out)} was started from another sweep file or "
                                  "overrides; give this one its own name (--set sweep.name=...), or start it over with "
                                  "--overwrite")
            self.resuming = self.record is not None
            self.record = self.record or {"name": spec.name, "fingerprint": spec.fingerprint(), "created": time.time(),
                                          "spec": redact(spec.__dict__)}
            self.save()
        except BaseException:
            self.owner.release()
            raise

    def _clear(self, mine: set) -> None:
        """--overwrite: the sweep's own outputs, and each trial's home whose record names that trial
        (a trial home holding anything a run does not write is refused, not deleted)."""
        self.owner.check()
        for name, is_dir in storage.list_entries(self.home).items():
            if name in (OWNER_DIR, layout.SWEEP_RECORD) or not is_dir:
                continue
            trial_home = storage.join(self.home, name)
            record = run_home.read_record(storage.join(trial_home, layout.RECORD_FILE))
            entries = storage.list_entries(trial_home)
            if record is None or record.get("name") != name or not all(run_home.run_entry(e) for e in entries):
                raise ConfigError(f"--overwrite: {storage.display(trial_home)} is not one of this sweep's trials; "
                                  "repb_ray deletes only what its runs wrote: remove it yourself")
            run_home.clear_home(trial_home, entries)
            storage.remove(trial_home)
        for entry in mine:
            storage.remove(os.path.join(self.out, entry))

    def save(self, **fields) -> None:
        self.owner.check()
        self.record.update(fields)
        storage.write_json(self.record_path, self.record)
        storage.write_json(storage.join(self.home, layout.SWEEP_RECORD), {"name": self.record["name"],
                                                                       "fingerprint": self.record["fingerprint"],
                                                                       "created": self.record["created"]})

    def release(self) -> None:
        self.owner.release()


def run_sweep(spec: SweepSpec, verbose: bool = False, overwrite: bool = False) -> dict:
    from repb_ray.tasks.loader import import_task_class
    from repb_ray.tracking import mlflow_tracking as mt
    from repb_ray.train.ray_env import check_cluster_paths, check_shared_paths, ensure_ray, task_runtime_env

    base = spec.base_config()
    if not verbose:
        # Tune's new console prints its configuration box, "View detailed results here" and a TensorBoard
        # hint whatever RunConfig.verbose says (its experiment_started ignores the verbosity); its classic
        # console honours verbose=0. The sweep's own lines are the console (Progress, SweepLog).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    check_cluster_paths(base)
    task_cls = import_task_class(base.task)
    metric, mode = f"test_{task_cls.metric}", task_cls.mode
    out = os.path.abspath(os.path.join(base.output_dir, spec.name))
    trials = spec.trials()
    configs = [spec.config_of(t) for t in trials]
    labels = label_trials(configs, spec.seed_keys)
    names = trial_names(trials, base)
    claim = SweepClaim(spec, base, out, overwrite)
    if threading.current_thread() is threading.main_thread():
        claim.owner.on_lost.append(_thread.interrupt_main)
    t0 = time.perf_counter()

    log = SweepLog(spec.name)
    try:
        ensure_ray(base, task_runtime_env(base.task), verbose)
        check_shared_paths(base)
        import ray
        demand = TrialDemand.of(base)
        concurrent = spec.max_concurrent_trials or capacity(demand, ray.cluster_resources())[0]
        uri = mt.resolve_tracking_uri(base.tracking_uri, base.output_dir)
        log(f"{'resuming: ' if claim.resuming else ''}{len(trials)} trial(s), metric {metric} ({mode})")
        parent = _parent_run(mt, uri, spec, base, claim)
        context = TrialContext({**base.to_dict(), "tracking_uri": None}, uri, parent, os.path.join(out, TRIALS_DIR),
                               tuple(names), claim.home, tracking_credentials())
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), TRIAL_RESOURCES)
        if spec.search_alg == "optuna":
            grid = _fit_optuna(trainable, spec, base, concurrent, metric, mode, out, log, claim)
            trials, names = _optuna_trials(grid)
            configs = [spec.config_of(t) for t in trials]
            labels = label_trials(configs, spec.seed_keys)
        else:
            grid = _fit(trainable, spec, base, trials, demand, metric, mode, labels, names, out, log, claim)
        statuses = _statuses(grid)
        expected = spec.num_samples if spec.search_alg == "optuna" else len(trials)
        if len(statuses) < expected or any(s not in TERMINAL for s in statuses.values()):
            raise SweepInterrupted(f"sweep {spec.name} interrupted with {sum(s in TERMINAL for s in statuses.values())} "
                                   f"of {expected} trials ended; run the same command to continue it")
        report = build_report(spec, configs, labels, names, grid, metric, mode, os.path.join(out, TRIALS_DIR),
                              claim.home)
        print(report.text, flush=True)
        summary = report.summary(sweep=spec.name, mlflow_tracking_uri=redact_text(uri), mlflow_parent_run_id=parent,
                                 wall_time_s=time.perf_counter() - t0)
        files = report.write(out, summary, spec.name)
        mixed = mixed_code(summary["code_versions"])
        if mixed:
            log(mixed)
        if uri:
            _finish_tracking(mt, uri, parent, report.rows, out, files, log)
            log(f"MLflow: mlflow ui --backend-store-uri {redact_text(uri)}")
        log(f"results in {out}")
        failed = [r for r in report.rows if r["status"] == "FAILED"]
        if failed and len(failed) == len(report.rows):
            first = next((r.get("error") for r in failed if r.get("error")), None)
            raise RunError(f"every trial of sweep {spec.name} failed" + (f" (first: {first})" if first else "")
                           + f"; each trial's error.log is under {os.path.join(out, TRIALS_DIR)}")
        return summary
    finally:
        claim.release()


def _parent_run(mt, uri: str | None, spec: SweepSpec, base: Config, claim: SweepClaim) -> str | None:
    """The sweep's MLflow run: the one this sweep started before (a resumed sweep), or a new one."""
    if not uri:
        return None
    mt.prepare_client_env()
    mt.check_reachable(uri)
    parent = claim.record.get("mlflow_parent_run_id")
    if parent and mt.reopen_run(uri, parent):
        return parent
    parent = mt.start_run(uri, base.experiment, base.output_dir, run_name=spec.name,
                          params={"base": spec.base, "search": spec.search, "grids": spec.grids,
                                  "baselines": spec.baselines, "seeds": spec.seeds, "seed_keys": spec.seed_keys, "num_samples": spec.num_samples,
                                  "asha": spec.asha, "reference": spec.reference, "search_alg": spec.search_alg},
                          tags={"sweep": spec.name, "kind": "sweep", **base.tags})
    claim.save(mlflow_parent_run_id=parent)
    return parent


def _fit(trainable, spec: SweepSpec, base: Config, trials: list[dict], demand: TrialDemand, metric: str, mode: str,
         labels: list, names: list[str], out: str, log, claim: SweepClaim):
    from ray.tune.schedulers import ASHAScheduler
    path = os.path.join(out, TUNE_DIR, spec.name)
    if tune.Tuner.can_restore(path):
        return _restore(path, trainable, claim, log)
    scheduler = None
    if spec.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                  grace_period=int(spec.asha.get("grace_period", 1)),
                                  reduction_factor=float(spec.asha.get("reduction_factor", 2)))
    searcher = Admission(trials, demand, spec.max_concurrent_trials, log)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=len(trials), search_alg=searcher,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(name=spec.name, storage_path=os.path.join(out, TUNE_DIR), verbose=0,
                                  callbacks=[Progress(spec.name, describe_trials(trials, labels, names), metric,
                                                      len(trials)), StateDigest(path, claim.home)]),
    )
    return _fit_recorded(tuner, path, claim)


def _restore(path: str, trainable, claim: SweepClaim, log):
    """Tune's own restore, only of the state this sweep saved there (state_digest.check)."""
    state_digest.check(path, claim.home, claim.resuming)
    state_digest.bind(claim.home, claim.owner.fence)
    log("continuing from its last saved state (finished trials are kept)")
    tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return _fit_recorded(tuner, path, claim)


def _fit_recorded(tuner, path: str, claim: SweepClaim):
    """tuner.fit(), then the digest of Tune's last save recorded (also when it was interrupted)."""
    state_digest.bind(claim.home, claim.owner.fence)
    try:
        return tuner.fit()
    finally:
        if not claim.owner.lost:
            state_digest.record(path, claim.home, claim.owner.fence)


def _statuses(grid) -> dict:
    """Tune's status of each trial of the sweep, by its place in it."""
    from repb_ray import _ray_compat
    return _ray_compat.tune_trials(grid)[0]


def _fit_optuna(trainable, spec: SweepSpec, base: Config, concurrent: int, metric: str, mode: str, out: str, log,
                claim: SweepClaim):
    """Optuna's sampler over the search distributions, two objectives: the test metric and the pruned
    fraction (their Pareto front is what a budget choice needs)."""
    from ray.tune.search import ConcurrencyLimiter
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # optuna is an optional dependency
        raise ConfigError(f"search_alg=optuna needs optuna: pip install 'repb-ray[optuna]' ({exc})") from None
    path = os.path.join(out, TUNE_DIR, spec.name)
    if tune.Tuner.can_restore(path):
        return _restore(path, trainable, claim, log)
    space = {"trial": {key: _domain(dist) for key, dist in spec.search.items()}}
    searcher = OptunaSearch(metric=[metric, "cum_pruned_fraction"], mode=[mode, "max"], seed=spec.sweep_seed)
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(num_samples=spec.num_samples,
                                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent)),
        run_config=tune.RunConfig(name=spec.name, storage_path=os.path.join(out, TUNE_DIR), verbose=0,
                                  callbacks=[Progress(spec.name, [], metric, spec.num_samples),
                                             StateDigest(path, claim.home)]),
    )
    return _fit_recorded(tuner, path, claim)


def _domain(dist: dict):
    kind, values = next(iter(dist.items()))
    if kind in ("grid", "choice"):
        return tune.choice(values)
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    return tune.randint(*values)


def _optuna_trials(grid) -> tuple[list[dict], list[str]]:
    """The overrides and run names of an Optuna sweep's trials, in the order Tune made them."""
    from repb_ray import _ray_compat
    made = _ray_compat.tune_trial_configs(grid)
    return [config["trial"] for _, config in made], [optuna_name(trial_id) for trial_id, _ in made]


def _finish_tracking(mt, uri: str, parent: str, rows: list[dict], out: str, files: list[str], log) -> None:
    """Close the trials' MLflow runs as their sweep status says, log the reports to the sweep's run."""
    try:
        client = mt.client(uri)
        for row in rows:
            run_id = row.get("mlflow_run_id")
            if not run_id:
                continue
            run = client.get_run(run_id)
            if run.info.status == "RUNNING":  # stopped by ASHA or died: record it
                mt.end_run(uri, run_id, "KILLED" if row["status"] == "STOPPED" else "FAILED")
            client.set_tag(run_id, "sweep_status", row["status"])
            client.set_tag(run_id, "method", row["method"])
        for name in files:
            mt.log_artifact(uri, parent, os.path.join(out, name), "plots" if name.endswith(".png") else None)
        finished = [r for r in rows if r["metric"] is not None]
        mt.log_epoch_metrics(uri, parent, {"trials_finished": len(finished)}, step=0)
        mt.end_run(uri, parent, "FINISHED")
    except Exception as exc:  # the sweep's results are on disk: say what was not tracked
        from repb_ray.errors import first_line
        log(f"warning: MLflow: the sweep's reports were not all tracked ({type(exc).__name__}: {first_line(exc)[:160]})")


