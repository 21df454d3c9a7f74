"""Every private Ray API repb_ray uses, in one place, each with why (checked against Ray 2.60). When
Ray changes one of these, this is the file to mend. Imported where Ray is in use."""

from __future__ import annotations


def data_config_execution_options(config, dataset_name: str):
    """The ExecutionOptions Ray Train's DataConfig would give a dataset: PlanDataConfig overrides
    `configure` to split the train set equally and the test set unequally, and must start from the
    same options Ray would (DataConfig._resolve_execution_options)."""
    return config._resolve_execution_options(dataset_name)


def read_source(ds):
    """The Datasource of `ds` when `ds` is one read and nothing after it (its logical plan's root is
    the Read operator), else None."""
    plan = getattr(ds, "_logical_plan", None)
    return getattr(plan.dag, "datasource", None) if plan is not None else None


def is_dataset(ds) -> bool:
    return hasattr(ds, "_logical_plan")


def own_context_copy(ds):
    """A copy of `ds` with its own DataContext (Dataset.copy(_deep_copy=True)): the plan binding and
    execution options set on it must not leak into the user's dataset or other pipelines."""
    return ds.copy(ds, _deep_copy=True)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    """Make the Ray this process may start listen on 127.0.0.1 only; call before Ray is imported. Ray
    replaces ray.init's `_node_ip_address="127.0.0.1"` by the host's address (services.
    resolve_ip_for_localhost) unless ray_constants.ENABLE_RAY_CLUSTER, read from this variable when
    Ray is imported, is off, as on a laptop; every server then binds to the node's address, loopback.
    The processes Ray starts inherit it. Not set when joining a cluster (RAY_ADDRESS)."""
    import os
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOOPBACK_ENV, "0")


def init_local(**kwargs) -> None:
    """Start a private local Ray whose every component listens on 127.0.0.1 (see
    keep_local_ray_on_loopback; where Ray was imported before that, it says so in one line)."""
    import os

    import ray
    os.environ.setdefault(LOOPBACK_ENV, "0")  # for the processes it starts
    ray.init(_node_ip_address="127.0.0.1", **kwargs)
    address = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    if address not in ("127.0.0.1", "[::1]", "::1", "localhost"):
        print(f"[repb_ray] warning: the private local Ray listens on {address}, not only on 127.0.0.1: Ray was imported "
              f"before repb_ray could keep it on loopback; set {LOOPBACK_ENV}=0 before importing Ray (the repb-ray "
              "command does)", flush=True)


def actor_pid(handle) -> int:
    """The process id of an actor (its built-in `__ray_call__`), for fault injection in tests."""
    import ray
    return ray.get(handle.__ray_call__.remote(lambda self: __import__("os").getpid()))


# The quiet console's Ray Data logging config names Ray Data's own handler and filters by their
# import paths (ray.data._internal.logging.SessionFileHandler / HiddenRecordFilter,
# ray._common.filters.CoreContextFilter, ray._private.log.PlainRayHandler): the documented way to
# configure Ray Data's logging is a YAML file of this shape (RAY_DATA_LOGGING_CONFIG).
RAY_DATA_LOGGING_CONFIG = """\
version: 1
disable_existing_loggers: False
formatters:
  ray:
    format: "%(asctime)s\\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"
filters:
  console_filter:
    (): ray.data._internal.logging.HiddenRecordFilter
  core_context_filter:
    (): ray._common.filters.CoreContextFilter
handlers:
  file:
    class: ray.data._internal.logging.SessionFileHandler
    formatter: ray
    filename: ray-data.log
  console:
    class: ray._private.log.PlainRayHandler
    formatter: ray
    level: ERROR
    filters: [console_filter]
loggers:
  ray.data:
    level: DEBUG
    handlers: [file, console]
    propagate: False
"""


def tune_trials(grid) -> tuple[dict, dict]:
    """Tune's status and last result of each trial of a sweep, by its place in the sweep (the `index`
    in its config, or for trials a searcher drew, their order): ResultGrid's Results carry no status,
    its ExperimentAnalysis's trials do."""
    statuses, results = {}, {}
    trials = grid._experiment_analysis.trials
    for order, trial in enumerate(sorted(trials, key=_made_at)):
        index = (trial.config or {}).get("index", order)
        statuses[index] = trial.status
        results[index] = dict(trial.last_result or {})
    return statuses, results


def tune_trial_configs(grid) -> list[tuple[str, dict]]:
    """(trial id, config) of each trial of a sweep, in the order Tune made them."""
    return [(t.trial_id, dict(t.config)) for t in sorted(grid._experiment_analysis.trials, key=_made_at)]


def _made_at(trial):
    """Tune numbers the trials it makes (the suffix of their ids)."""
    suffix = trial.trial_id.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def session_dir() -> str:
    """The folder of this process's Ray session (logs included): Ray exposes it only on its node object."""
    import ray._private.worker
    return ray._private.worker._global_node.get_session_dir_path()
