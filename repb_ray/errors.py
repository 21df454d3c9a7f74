"""User errors vs bugs: the one-line message of a bad input, found in the driver or raised inside a
Ray worker (then with the rank and where the full log is). Runs in the driver."""

from __future__ import annotations

import os
import traceback

from repb_ray.config import ConfigError
from repb_ray.data.sources import DataError
from repb_ray.task import TaskError

USER_ERRORS = (ConfigError, TaskError, DataError, FileNotFoundError, FileExistsError)


def _causes(exc: BaseException):
    """exc, its causes, and what Ray wrapped (RayTaskError.cause, worker failures)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        for attr in ("cause", "controller_failure", "__cause__", "__context__"):
            stack.append(getattr(e, attr, None))


def user_error(exc: BaseException) -> BaseException | None:
    """The user error behind `exc` (found through Ray's wrappers), if there is one."""
    for e in _causes(exc):
        if isinstance(e, USER_ERRORS):
            return e
    return None


def worker_rank(exc: BaseException) -> int | None:
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return min(failures)
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def write_log(exc: BaseException, directory: str | None) -> str | None:
    """The full traceback (with Ray's wrapped ones) into directory/error.log."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "error.log")
        with open(path, "w") as fh:
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            for e in _causes(exc):
                if e is not exc and getattr(e, "__traceback__", None) is not None:
                    fh.write("\n--- caused by ---\n")
                    fh.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        return path
    except OSError:
        return None


def describe(exc: BaseException, log_dir: str | None) -> tuple[str, int]:
    """(one line, exit code): 2 for a user error, 1 for anything else (a bug: see the log)."""
    rank = worker_rank(exc)
    where = f"rank {rank}: " if rank is not None else ""
    inner = user_error(exc)
    log = write_log(exc, log_dir) if rank is not None or inner is None else None
    tail = f" (full log: {log})" if log else ""
    if inner is not None:
        return f"{where}{first_line(inner)}{tail}", 2
    root = exc
    for e in _causes(exc):
        if not type(e).__module__.startswith("ray"):
            root = e
            break
    return f"{where}{type(root).__name__}: {first_line(root)}{tail}", 1
