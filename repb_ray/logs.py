"""The CLI's quiet mode: libraries keep INFO lines to their log files, the console keeps to repb_ray's
own lines (start, progress, one per epoch). Runs in the driver, before Ray, Ray Data or MLflow start."""

from __future__ import annotations

import logging
import os

RAY_DATA_CONFIG = """\
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


def quiet() -> None:
    """MLflow at WARNING; Ray Data's console handler at ERROR (its file log keeps everything)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ:
        path = os.path.join(os.path.expanduser("~/.cache/repb_ray"), "ray_data_logging.yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path) or open(path).read() != RAY_DATA_CONFIG:
            with open(path, "w") as fh:
                fh.write(RAY_DATA_CONFIG)
        os.environ["RAY_DATA_LOGGING_CONFIG"] = path
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
