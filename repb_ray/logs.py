"""The CLI's quiet mode: libraries keep INFO lines to their log files, the console keeps to repb_ray's
own lines (start, progress, one per epoch); secrets are masked in every log record. Runs in the
driver, before Ray, Ray Data or MLflow start."""

from __future__ import annotations

import logging
import os

from repb_ray._ray_compat import RAY_DATA_LOGGING_CONFIG
from repb_ray.paths import cache_dir
from repb_ray.redact import install_log_filter


def quiet() -> None:
    """MLflow at WARNING; Ray Data's console handler at ERROR (its file log keeps everything)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ:
        try:
            path = os.path.join(cache_dir(), "ray_data_logging.yaml")
            if not os.path.exists(path) or open(path).read() != RAY_DATA_LOGGING_CONFIG:
                from repb_ray.storage import write_bytes
                write_bytes(path, RAY_DATA_LOGGING_CONFIG.encode())
            os.environ["RAY_DATA_LOGGING_CONFIG"] = path
        except OSError:  # no writable cache: Ray Data keeps its default console output
            pass
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mask_secrets() -> None:
    """Mask credentials in this process's log records (its own, MLflow's, Ray's)."""
    install_log_filter("", "mlflow", "ray", "urllib3", "requests")
