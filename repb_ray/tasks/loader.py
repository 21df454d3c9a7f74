"""Finding and loading tasks: a built-in name or `module:Class`, imported as `python -m` would find it,
checked against the contract, instantiated once per process. Runs wherever a task is used."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field

from repb_ray.core.checks import suggest
from repb_ray.errors import TaskError, first_line
from repb_ray.task import REQUIRED, Task
from repb_ray.tasks import BUILTIN


@dataclass(frozen=True)
class TaskRef:
    """What names a task: an import path and its arguments; loads it once per process."""

    path: str
    args: dict = field(default_factory=dict)

    def load(self) -> Task:
        key = (self.path, _freeze(self.args))
        task = _LOADED.get(key)
        if task is None:
            task = _LOADED[key] = instantiate(self.path, self.args)
        return task

    @property
    def module(self) -> str:
        return resolve_path(self.path).split(":")[0]


_LOADED: dict = {}


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def resolve_path(path: str) -> str:
    """A built-in task name (fashion_mnist, ...) or module:Class."""
    if path in BUILTIN:
        return BUILTIN[path]
    return path


def _check_task_path(path: str) -> None:
    """`./my_task.py:MyTask` is a file path, not an import path: say which one to write."""
    module = path.split(":", 1)[0]
    if "/" in module or module.endswith(".py") or "\\" in module:
        stem = os.path.splitext(os.path.basename(module))[0]
        cls = path.split(":", 1)[1] if ":" in path else "MyTask"
        raise TaskError(f"task={path!r} is a file path; name the module as Python imports it, from the folder that "
                          f"holds it: task={stem}:{cls}")


def import_task_class(path: str) -> type:
    """Import `module:Class` as `python -m` would find it: the current directory first, then the
    Python path. One-line TaskError on anything wrong."""
    if isinstance(path, str):
        _check_task_path(path)
    full = resolve_path(path)
    if not isinstance(path, str) or ":" not in full:
        raise TaskError(f"task must be a built-in name ({', '.join(BUILTIN)}) or 'module:Class', got "
                        f"task={path!r}{suggest(str(path), BUILTIN)}")
    module_name, _, cls_name = full.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TaskError(f"task {path!r}: module {module_name!r} not found from {cwd} or the Python path; "
                            "run from the directory that holds it or add it to PYTHONPATH") from None
        raise TaskError(f"task {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the user's module raised while importing
        raise TaskError(f"task {path!r}: importing {module_name!r} failed: {type(exc).__name__}: "
                        f"{first_line(exc)}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, Task) and v is not Task]
        raise TaskError(f"task {path!r}: module {module_name!r} has no class {cls_name!r}"
                        f"{suggest(cls_name, names)}; its tasks: {', '.join(names) or 'none'}")
    check_task_class(cls, path)
    return cls


def check_task_class(cls, path: str) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise TaskError(f"task {path!r} is not a subclass of repb_ray.Task; write `class {getattr(cls, '__name__', cls)}"
                        "(repb_ray.Task)` and define its hooks")
    missing = [h for h in REQUIRED if getattr(cls, h) is getattr(Task, h)]
    if missing:
        raise TaskError(f"task {path!r} does not define the hook{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}; every task needs train_dataset(), model() and loss(model, batch)")


def instantiate(path: str, args: dict | None) -> Task:
    """The task `path` built with `args`; `{env: NAME}` references become the variables' values here,
    where the task is built, and nowhere else."""
    from repb_ray.credentials import resolve
    cls = import_task_class(path)
    args = resolve(dict(args or {}))
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as exc:
        raise TaskError(f"task {path!r}: task_args {sorted(args)} do not fit {cls.__name__}{inspect.signature(cls)}: "
                        f"{exc}") from None
    try:
        return cls(**args)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task {path!r}: __init__ failed: {type(exc).__name__}: {first_line(exc)}") from None
