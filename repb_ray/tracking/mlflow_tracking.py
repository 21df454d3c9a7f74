"""MLflow through MlflowClient: runs, params (redacted, at any depth), metrics, artifacts, the model
(not pickled where the model allows). Runs in the driver (a training run) and in the sweep's driver;
no Ray process other than these ever holds the tracking URI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request

from repb_ray.code_version import code_version
from repb_ray.errors import ConfigError, first_line
from repb_ray.redact import install_log_filter, redact, redact_text

NON_METRIC_KEYS = {"plan_digest", "worker_entered_at"}  # a digest, a moment
HTTP_SCHEMES = ("http://", "https://")
# MLflow retries an HTTP call for minutes by default; a tracking outage must not hold a run that long
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def resolve_tracking_uri(tracking_uri: str | None, output_dir: str) -> str | None:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a SQLite store under output_dir; 'none' disables."""
    from repb_ray.credentials import take_tracking_credentials
    uri = take_tracking_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    if uri and uri.lower() == "none":
        return None
    if not uri:
        os.makedirs(output_dir, exist_ok=True)
        uri = "sqlite:///" + os.path.abspath(os.path.join(output_dir, "mlflow.db"))
    return uri


def prepare_client_env() -> None:
    """Bounded retries and no run URLs printed (they would carry credentials) for this process's
    MLflow clients; secrets masked in MLflow's log records."""
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    install_log_filter("mlflow", "urllib3", "requests")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """One line within seconds when the tracking store cannot be used, instead of minutes of retries."""
    if uri.startswith(HTTP_SCHEMES):
        import base64
        from urllib.parse import urlsplit, urlunsplit

        from repb_ray.credentials import MLFLOW_PASSWORD, MLFLOW_USER, split_credentials, tracking_credentials
        uri = split_credentials(uri)[0]
        creds = {**{k: os.environ[k] for k in (MLFLOW_USER, MLFLOW_PASSWORD) if k in os.environ}, **tracking_credentials()}
        parts = urlsplit(uri.rstrip("/"))
        headers = {}
        if MLFLOW_USER in creds:  # credentials go in a header, as MLflow's client sends them
            token = f"{creds[MLFLOW_USER]}:{creds.get(MLFLOW_PASSWORD, '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
        url = urlunsplit(parts._replace(path=parts.path + "/health"))
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers, method="GET"), timeout=timeout_s).read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ConfigError(f"tracking_uri={redact_text(uri)!r} refused the credentials (HTTP {exc.code}); "
                                  "check the user and password or token") from None
            return  # the server answers (a proxy without /health): go on
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"tracking_uri={redact_text(uri)!r} is not reachable ({redact_text(str(reason))}); "
                              "start the MLflow server, fix the URI, or pass --tracking-uri none") from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError(f"tracking_uri={redact_text(uri)!r} is not usable: the folder {folder} does not exist or "
                              "is not writable; pass a SQLite path in an existing folder, an MLflow server, or "
                              "tracking_uri=none")


class SQLiteStoreLock:
    """One writer at a time for a SQLite store, across threads, processes and hosts: an exclusive lock
    on `<db>.lock` beside the database (flock; NFSv4 and most network volumes honour it). SQLite's own
    locking does not hold on a network volume, and MLflow creates or migrates the schema on first open."""

    def __init__(self, uri: str):
        self.path = uri[len("sqlite:///"):] + ".lock"
        self._fh = None

    def __enter__(self):
        import fcntl
        self._fh = open(self.path, "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None


class LockedClient:
    """An MlflowClient whose every call holds the store's SQLiteStoreLock (train jobs and sweep trials alike)."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient
        self.lock_uri = uri
        with SQLiteStoreLock(uri):
            self._client = MlflowClient(tracking_uri=uri)

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with SQLiteStoreLock(self.lock_uri):
                return attr(*args, **kwargs)
        return locked


def client(uri: str):
    """An MlflowClient; for SQLite, one whose every call holds the store's lock (one writer at a time,
    wherever the store lives)."""
    from mlflow.tracking import MlflowClient

    from repb_ray.credentials import apply_tracking_credentials
    apply_tracking_credentials()  # MLflow's own variables, in this process only
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    return LockedClient(uri)


def experiment_id(uri: str, name: str, output_dir: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = "file://" + os.path.abspath(os.path.join(output_dir, "mlartifacts"))
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def flat_params(params: dict) -> dict[str, str]:
    """Params as MLflow strings, redacted at any depth (mappings and lists as JSON)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
            for k, v in redact(params).items()}


def start_run(uri: str, experiment: str, output_dir: str, *, run_name: str, params: dict, tags: dict,
              parent_run_id: str | None = None) -> str:
    c = client(uri)
    code = code_version()
    all_tags = {"git_commit": code["git_commit"], "source_digest": code["source_digest"], **{k: redact_text(str(v)) for k, v in tags.items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(uri, experiment, output_dir), run_name=run_name, tags=all_tags)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def reopen_run(uri: str, run_id: str) -> bool:
    """Mark an existing run RUNNING again (a resumed run keeps its MLflow run); False if it is gone."""
    c = client(uri)
    try:
        c.get_run(run_id)
    except Exception:
        return False
    c.update_run(run_id, status="RUNNING")
    return True


def logged_steps(uri: str, run_id: str, key: str = "train_loss") -> set[int]:
    """The epochs whose metrics a run holds (by a key every epoch logs)."""
    return {int(m.step) for m in client(uri).get_metric_history(run_id, key)}


def log_params(uri: str, run_id: str, params: dict) -> None:
    from mlflow.entities import Param
    flat = [Param(k, v) for k, v in sorted(flat_params(params).items())]
    c = client(uri)
    for i in range(0, len(flat), 100):
        c.log_batch(run_id, params=flat[i:i + 100])


def log_epoch_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if k not in NON_METRIC_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def log_datasets(uri: str, run_id: str, records: list[dict]) -> None:
    """Datasets (tracking/datasets.py records) as the run's inputs, each with its context tag."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from repb_ray.tracking.datasets import CONTEXT_TAG
    inputs = [DatasetInput(Dataset(r["name"], r["digest"], r["source_type"], r["source"], r["schema"], r["profile"]),
                           [InputTag(CONTEXT_TAG, r["context"])]) for r in records]
    client(uri).log_inputs(run_id, datasets=inputs)


def log_model_metric(uri: str, run_id: str, key: str, value: float, model_id: str, dataset: dict, step: int) -> None:
    """A metric of the logged model on a dataset: MLflow links the LoggedModel to that dataset through it."""
    client(uri).log_metric(run_id, key, float(value), step=step, dataset_name=dataset["name"],
                           dataset_digest=dataset["digest"], model_id=model_id)


def system_metrics(uri: str, run_id: str, interval_s: float = 5.0):
    """MLflow's monitor of this node's CPU, memory, disk, network (and GPU), logging into the run every
    `interval_s`; started. Stop it with .finish()."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=uri)
    monitor.start()
    return monitor


def log_artifact(uri: str, run_id: str, path: str, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, path, artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """MLflow's fluent API pointed at `uri` for the block, and everything it changed put back: the global
    URI and $MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri also writes (left set, it would send the
    next run of this process, and every process it starts, to that store)."""
    import mlflow
    previous, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_model(uri: str, run_id: str, model, example) -> tuple[str, str | None]:
    """The trained model as an MLflow PyTorch model: with an input example, exported (pt2, no pickle:
    load with mlflow.pytorch.load_model); without one (or when the model does not export), its weights
    as a plain tensor file `model_state_dict.pt` (load with torch.load(..., weights_only=True) into
    the task's model()). Returns the format used and the LoggedModel's id (None for the weights alone)."""
    import torch
    model.eval()
    if example is not None:
        import mlflow
        import mlflow.pytorch  # (imports Lightning when installed: seconds, so only to export)
        from mlflow.models import infer_signature
        with torch.no_grad():
            out = model(torch.as_tensor(example))
        signature = infer_signature(example, out.numpy() if hasattr(out, "numpy") else None)
        quiet = logging.getLogger("mlflow")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            store_lock = SQLiteStoreLock(uri) if uri.startswith("sqlite:///") else contextlib.nullcontext()
            with fluent_tracking_uri(uri), store_lock, mlflow.start_run(run_id=run_id):
                # the requirements named, not inferred: inference imports the model in a subprocess (8 s)
                info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                                serialization_format="pt2",
                                                pip_requirements=mlflow.pytorch.get_default_pip_requirements())
            return "pt2", getattr(info, "model_id", None)
        except Exception as exc:  # a model torch.export cannot trace: keep the weights
            print(f"[repb_ray] MLflow: the model does not export ({type(exc).__name__}: {first_line(exc)[:120]}); "
                  "logged its weights (model_state_dict.pt) instead", flush=True)
        finally:
            quiet.setLevel(level)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model_state_dict.pt")
        torch.save(model.state_dict(), path)
        log_artifact(uri, run_id, path, "model")
    return "state_dict", None
