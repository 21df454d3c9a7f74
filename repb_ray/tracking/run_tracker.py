"""The MLflow run of one training job, seen from its driver: started (or reopened on resume) before
the first epoch with the datasets it trains and tests on and the node's system metrics, fed each
epoch's metrics and plan as the driver learns them, finished with the summary, plots, selection counts
and the model (linked to the test data by its final metric). A tracking failure never stops or stalls training: it is
one warning line, the metrics wait and are retried, and the summary says what was not tracked.
Runs in the driver (a Tune trial's driver in a sweep)."""

from __future__ import annotations

import os
import threading

import numpy as np

from repb_ray.config import Config
from repb_ray.errors import ConfigError, first_line
from repb_ray.layout import COUNTS_FILE, CURVES_FILE, SUMMARY_FILE
from repb_ray.redact import redact_text
from repb_ray.tracking import mlflow_tracking as mt


class RunTracker:
    """tracking_uri='none' makes every method a no-op."""

    def __init__(self, cfg: Config, *, parent_run_id: str | None = None, resume_run_id: str | None = None,
                 uri: str | None = None, log=print):
        self.cfg, self.log = cfg, log
        self.uri = uri if uri is not None else mt.resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)
        self.uri = self.uri or None
        self.run_id = None
        self.pending: list[dict] = []      # epoch metrics not logged yet
        self.untracked: list[str] = []     # what could not be tracked, for the summary
        self.logged: dict[int, set] = {}   # epoch -> the metrics of it logged so far
        self.closed: set[int] = set()      # epochs a resumed run had logged before this process
        self.data: dict[str, dict] = {}    # "train"/"test" -> the MLflow dataset record logged (tracking/datasets.py)
        self._plans_logged: set[int] = set()
        self._monitor = None
        self._warned = False
        self._lock = threading.Lock()
        if not self.uri:
            return
        mt.prepare_client_env()
        mt.check_reachable(self.uri)
        try:
            if resume_run_id and mt.reopen_run(self.uri, resume_run_id):
                self.run_id = resume_run_id
                self.closed = mt.logged_steps(self.uri, resume_run_id)  # a resumed run logs each epoch once
            else:
                self.run_id = mt.start_run(self.uri, cfg.experiment, cfg.output_dir, run_name=cfg.name,
                                           params=cfg.to_dict(), parent_run_id=parent_run_id,
                                           tags={"policy": cfg.policy, "task": cfg.task, **cfg.tags})
        except Exception as exc:
            raise ConfigError(f"tracking_uri={redact_text(self.uri)!r} is not usable ({type(exc).__name__}: "
                              f"{first_line(exc)[:200]}); pass a reachable MLflow server, a SQLite path in an "
                              "existing directory, or tracking_uri=none") from None
        if cfg.system_metrics:
            try:
                self._monitor = mt.system_metrics(self.uri, self.run_id)
            except Exception as exc:  # psutil missing, or the store refuses: the run goes on without them
                self._warn("system metrics", exc)
                self.untracked.append("system metrics")

    def datasets(self, records: dict[str, dict]) -> None:
        """The train and test data as the run's inputs (`records`: context name -> tracking/datasets.py record)."""
        if not self.run_id:
            return
        if self._try("datasets", mt.log_datasets, self.uri, self.run_id, list(records.values())):
            self.data = dict(records)

    @property
    def safe_uri(self) -> str | None:
        return redact_text(self.uri) if self.uri else None

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            self.log(f"[repb_ray] warning: MLflow tracking failed ({what}: {type(exc).__name__}: "
                     f"{first_line(exc)[:160]}); training goes on, metrics are retried")

    @property
    def logged_epochs(self) -> set[int]:
        return set(self.logged) | self.closed

    def epoch(self, metrics: dict) -> None:
        """An epoch's metrics (rank 0's), logged now or when the store answers again; a later report of
        the same epoch (its test metrics, evaluated asynchronously) adds only what was not logged."""
        if not self.run_id:
            return
        with self._lock:
            self._enqueue(metrics)
            self.flush()
            self._log_plan(metrics)

    def _log_plan(self, metrics: dict) -> None:
        """The epoch's plan (digest, kept) as a dataset input of the run, once."""
        e = int(metrics["epoch"])
        if "train" not in self.data or e in self._plans_logged or "plan_digest" not in metrics:
            return
        from repb_ray.tracking.datasets import plan_record
        record = plan_record(self.data["train"], e, int(metrics["kept"]), str(metrics["plan_digest"]))
        if self._try(f"the plan of epoch {e}", mt.log_datasets, self.uri, self.run_id, [record]):
            self._plans_logged.add(e)

    def _enqueue(self, metrics: dict) -> None:
        e = int(metrics["epoch"])
        if e in self.closed:
            return
        merged = {**next((m for m in self.pending if int(m["epoch"]) == e), {}), **metrics}
        self.pending = sorted([m for m in self.pending if int(m["epoch"]) != e] + [merged], key=lambda m: m["epoch"])

    def flush(self) -> None:
        while self.pending:
            m = self.pending[0]
            e = int(m["epoch"])
            new = {k: v for k, v in m.items() if k not in self.logged.get(e, ())}
            try:
                mt.log_epoch_metrics(self.uri, self.run_id, new, step=e)
            except Exception as exc:
                self._warn(f"epoch {e} metrics", exc)
                return
            self.logged.setdefault(e, set()).update(new)
            self.pending.pop(0)

    def _try(self, what: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:
            self._warn(what, exc)
            self.untracked.append(what)
            return False

    def log_summary(self, summary_path: str) -> None:
        """Log summary.json again, over the copy `finish` logged: its final version has the tracking record and
        where the whole run's time went, tracking's finish included."""
        if self.run_id:
            self._try(SUMMARY_FILE, mt.log_artifact, self.uri, self.run_id, summary_path)

    def finish(self, summary_path: str, history: list, metric: str | None, *, model=None, example=None,
               counts: np.ndarray | None = None) -> dict:
        """Log whatever epochs are missing, the summary, plots, selection counts and the model, then
        mark the run FINISHED. Returns what the summary records about tracking."""
        if not self.run_id:
            return {"uri": None}
        from repb_ray.plots import run_curves
        with self._lock:
            for m in history:  # the full history completes what the feed had of each epoch
                self._enqueue(m)
            self.flush()
            if self.pending:
                self.untracked.append(f"metrics of epochs {[m['epoch'] for m in self.pending]}")
        self._try(SUMMARY_FILE, mt.log_artifact, self.uri, self.run_id, summary_path)
        if history:
            png = run_curves(history, os.path.join(self.cfg.run_dir, CURVES_FILE), self.cfg.name, metric)
            self._try(CURVES_FILE, mt.log_artifact, self.uri, self.run_id, png, "plots")
        if counts is not None:
            path = os.path.join(self.cfg.run_dir, COUNTS_FILE)
            np.savez_compressed(path, counts=counts, epochs=np.int64(len(history)))
            self._try("selection_counts.npz", mt.log_artifact, self.uri, self.run_id, path)
        model_format = model_id = None
        if model is not None:
            try:
                model_format, model_id = mt.log_model(self.uri, self.run_id, model, example)
            except Exception as exc:
                self._warn("the model", exc)
                self.untracked.append("model")
        final = history[-1] if history else {}
        key = metric  # the summary's metric: a history key, test_<task metric>
        if model_id and "test" in self.data and key in final:
            # under its own key (final_<metric>, at the last epoch): the run's per-epoch history stays one per epoch
            self._try("the model's test metric", mt.log_model_metric, self.uri, self.run_id, f"final_{key}", final[key],
                      model_id, self.data["test"], int(final["epoch"]))
        self._stop_monitor()
        self._try("run status", mt.end_run, self.uri, self.run_id, "FINISHED")
        return {"uri": self.safe_uri, "run_id": self.run_id, "model_format": model_format,
                "untracked": list(self.untracked)}

    def end(self, status: str) -> None:
        self._stop_monitor()
        if self.run_id:
            self._try("run status", mt.end_run, self.uri, self.run_id, status)

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as exc:
                self._warn("system metrics", exc)
