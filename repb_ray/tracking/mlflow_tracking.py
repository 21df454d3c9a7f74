"""MLflow tracking through MlflowClient: runs, params, per-epoch metrics, artifacts; runs in the driver
and in the Train controller (the epoch callback)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time

NON_METRIC_KEYS = {"plan_digest"}


def resolve_tracking_uri(tracking_uri: str | None, output_dir: str) -> str | None:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a SQLite store under output_dir; 'none' disables."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.lower() == "none":
        return None
    if not uri:
        os.makedirs(output_dir, exist_ok=True)
        uri = "sqlite:///" + os.path.abspath(os.path.join(output_dir, "mlflow.db"))
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_SECRET_QUERY = ("token", "password", "secret", "key", "signature", "credential")


def redact(uri):
    """A URI without credentials: user:password@ becomes ***@ and secret-looking query values ***."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
    parts = urlsplit(uri)
    secret_query = any(any(w in k.lower() for w in _SECRET_QUERY) for k, _ in parse_qsl(parts.query))
    if "@" not in parts.netloc and not secret_query:
        return uri  # nothing to hide: leave it byte for byte (sqlite:////abs/path must keep its slashes)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = [(k, "***" if any(w in k.lower() for w in _SECRET_QUERY) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redacted_params(params: dict) -> dict:
    return {k: (redact(v) if k in ("tracking_uri", "storage_path") else v) for k, v in params.items()}


def client(uri: str):
    return _client(uri)


def _client(uri: str):
    """An MlflowClient; for SQLite, opened under a file lock, since MLflow creates or migrates the
    schema when a process first opens the store, and concurrent trials would race on it."""
    from mlflow.tracking import MlflowClient
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    import fcntl
    with open(uri[len("sqlite:///"):] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return MlflowClient(tracking_uri=uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def experiment_id(uri: str, name: str, output_dir: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = "file://" + os.path.abspath(os.path.join(output_dir, "mlartifacts"))
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def start_run(uri: str, experiment: str, output_dir: str, *, run_name: str, params: dict, tags: dict,
              parent_run_id: str | None = None) -> str:
    client = _client(uri)
    all_tags = {"git_commit": git_commit(), **{k: str(v) for k, v in tags.items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(uri, experiment, output_dir), run_name=run_name, tags=all_tags)
    log_params(uri, run.info.run_id, redacted_params(params))
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict) -> None:
    from mlflow.entities import Param
    flat = [Param(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in sorted(params.items())]
    client = _client(uri)
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i:i + 100])


def log_epoch_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if k not in NON_METRIC_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
    _client(uri).log_batch(run_id, metrics=batch)


def log_artifact(uri: str, run_id: str, path: str, artifact_path: str | None = None) -> None:
    _client(uri).log_artifact(run_id, path, artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def epoch_callback(uri: str, run_id: str):
    """A ray.train.UserCallback logging rank 0's metrics of every report to the run, step = epoch."""
    import ray.train

    class MlflowEpochCallback(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0]:
                log_epoch_metrics(uri, run_id, metrics[0], step=int(metrics[0].get("epoch", 0)))

    return MlflowEpochCallback()


def log_model(uri: str, run_id: str, task, checkpoint) -> None:
    """The trained model as an MLflow PyTorch model (with its signature when the task gives an input
    example), from the run's last checkpoint."""
    import mlflow
    import mlflow.pytorch
    import torch
    model = task.model()
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location="cpu"))
    model.eval()
    example = task.input_example()
    signature = None
    if example is not None:
        from mlflow.models import infer_signature
        with torch.no_grad():
            out = model(torch.as_tensor(example))
        signature = infer_signature(example, out.numpy() if hasattr(out, "numpy") else None)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    quiet = logging.getLogger("mlflow.pytorch")  # its pickle caution, once per run: the README says it
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id):  # pickle: any model (pt2 would trace it and needs an example)
            mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                     serialization_format="pickle")
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous)
