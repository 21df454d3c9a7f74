"""User errors vs bugs: the error types of bad input, and the one-line message of an error found in
the driver or raised inside a Ray worker (then with the rank and where the full log is), redacted.
No Ray, no torch; runs in the driver."""

from __future__ import annotations

import os
import traceback

from repb_ray.layout import ERROR_LOG
from repb_ray.redact import redact_text


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and the fix."""


class TaskError(ValueError):
    """A task that breaks the contract; the message names the task, the hook and the fix."""


class DataError(ValueError):
    """A train or test dataset that breaks the contract (ids, reserved columns, files)."""


class RunError(RuntimeError):
    """A run that cannot start or go on as asked (its name is taken by a live driver, its storage
    holds another run, a checkpoint was tampered with); the message says what to do."""


class StorageError(RunError):
    """Storage that cannot hold a run as asked (no exclusive create, credentials in a URI, a listing
    that failed); the message names the location and what to use instead."""


class OwnershipLost(RunError):
    """This driver no longer owns its run (another driver took it over, or its heartbeat could not be
    written): the run stops and deletes nothing."""


USER_ERRORS = (ConfigError, TaskError, DataError, RunError, FileNotFoundError, FileExistsError)


def causes(exc: BaseException):
    """exc, its causes, and what Ray wrapped (RayTaskError.cause, worker failures)."""
    seen = set()
    stack: list[BaseException | None] = [exc]
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
    for e in causes(exc):
        if isinstance(e, USER_ERRORS):
            return e
    return None


def worker_rank(exc: BaseException) -> int | None:
    """The lowest rank whose error `exc` holds (found through Ray's wrappers), if it holds any."""
    for e in causes(exc):
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            return min(failures)
    return None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the error's text, redacted."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return redact_text(lines[0]) if lines else type(exc).__name__


def write_log(exc: BaseException, directory: str | None) -> str | None:
    """The full traceback (with Ray's wrapped ones), redacted, into directory/error.log."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        parts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
        for e in causes(exc):
            if e is exc:
                continue
            if getattr(e, "__traceback__", None) is not None:
                parts.append("\n--- caused by ---\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            else:  # came from another process (a worker's error through Ray): its text holds the remote traceback
                parts.append(f"\n--- caused by ---\n{type(e).__name__}: {e}\n")
        path = os.path.join(directory, ERROR_LOG)
        from repb_ray.storage import write_bytes
        write_bytes(path, redact_text("".join(parts)).encode())
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
    for e in causes(exc):
        if not type(e).__module__.startswith("ray"):
            root = e
            break
    return f"{where}{type(root).__name__}: {first_line(root)}{tail}", 1
