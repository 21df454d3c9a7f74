"""The Task contract: the one seam through which a user's data, model, per-sample loss and metrics
enter repb_ray (Ray workers, the plain PyTorch loop, sweeps). Runs wherever the task is used."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from repb_ray.core.checks import suggest

HOOKS = ("train_dataset", "test_dataset", "preprocess", "model", "loss", "metrics")
REQUIRED = ("train_dataset", "model", "loss")


class TaskError(ValueError):
    """A task that breaks the contract; the message names the task, the hook and the fix."""


class Task:
    """Subclass it in your own file and point the config at it (`task: my_module:MyTask`).

    Hooks (the three marked * are required):
      __init__(**task_args)                    keep it light: store the arguments, load data in the hooks
    * train_dataset() -> ray.data.Dataset      an int64 column "id" with the values 0..n-1, each once
      test_dataset() -> ray.data.Dataset|None  evaluated after every epoch (default: None)
      preprocess(batch) -> batch               numpy dict -> numpy dict, runs in Ray Data after the
                                               pruning filter (decode, augment); default: identity
      eval_preprocess(batch) -> batch          the same for the test set (default: preprocess)
    * model() -> torch.nn.Module
    * loss(model, batch) -> Tensor [B]         the per-sample loss, not reduced; batch is a dict of
                                               tensors on the training device (with "id", "weight")
      metrics(model, batch) -> dict            per-batch sums, e.g. {"correct": c, "count": n}
      summarize(sums) -> dict                  metrics from the summed sums (default: each sum / count)
      input_example() -> array | None          a model input, to log the trained model's signature

    `metric` and `mode` name the test metric that sweeps optimise ("accuracy", "max" by default).
    """

    metric = "accuracy"
    mode = "max"

    def __init__(self, **task_args):
        if task_args:
            raise TaskError(f"task {type(self).__name__} takes no arguments, got task_args "
                            f"{sorted(task_args)}; define __init__(self, **task_args) to accept them")

    def train_dataset(self):
        raise NotImplementedError

    def test_dataset(self):
        return None

    def preprocess(self, batch: dict) -> dict:
        return batch

    def eval_preprocess(self, batch: dict) -> dict:
        return self.preprocess(batch)

    def model(self):
        raise NotImplementedError

    def loss(self, model, batch: dict):
        raise NotImplementedError

    def metrics(self, model, batch: dict) -> dict:
        """Per-batch sums for evaluation; the default is the summed per-sample loss and the count."""
        per_sample = self.loss(model, batch)
        return {"loss_sum": per_sample.detach().float().sum(), "count": per_sample.shape[0]}

    def input_example(self):
        """A model input (numpy array or dict of arrays) for the MLflow model's signature; optional."""
        return None

    def summarize(self, sums: dict) -> dict:
        """Test metrics from the sums of `metrics` over the whole test set."""
        count = sums.get("count")
        if not count:
            return dict(sums)
        out = {}
        for k, v in sums.items():
            if k == "count":
                continue
            out["loss" if k == "loss_sum" else k] = v / count
        if "correct" in sums:
            out["accuracy"] = out.pop("correct")
        return out


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
    from repb_ray.tasks import BUILTIN
    if path in BUILTIN:
        return BUILTIN[path]
    return path


def import_task_class(path: str) -> type:
    """Import `module:Class` as `python -m` would find it: the current directory first, then the
    Python path. One-line TaskError on anything wrong."""
    from repb_ray.tasks import BUILTIN
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
                        f"{_one_line(exc)}") from None
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
    cls = import_task_class(path)
    args = dict(args or {})
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
        raise TaskError(f"task {path!r}: __init__ failed: {type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_loss(path: str, per_sample, batch_size: int, first: bool = True) -> None:
    """The per-sample loss must be a float tensor of shape [B], finite (checked on the first batch
    in full; later batches are checked where the scores reach the host)."""
    import torch
    hook = f"task {path!r}: loss(model, batch)"
    if not isinstance(per_sample, torch.Tensor):
        raise TaskError(f"{hook} returned {type(per_sample).__name__}; return a torch tensor of shape "
                        f"[{batch_size}], one loss per sample")
    if per_sample.ndim == 0:
        raise TaskError(f"{hook} returned a scalar: the loss is already reduced; build it with "
                        f"reduction='none' so it has shape [{batch_size}]")
    if tuple(per_sample.shape) != (batch_size,):
        raise TaskError(f"{hook} returned shape {list(per_sample.shape)}, expected [{batch_size}] (one loss per "
                        "sample); reduce every other dimension per sample, e.g. .mean(dim=1)")
    if not per_sample.is_floating_point():
        raise TaskError(f"{hook} returned dtype {per_sample.dtype}; return a floating-point tensor")
    if not per_sample.requires_grad:
        raise TaskError(f"{hook} returned a tensor without grad; compute it from the model's output "
                        "(not under torch.no_grad() and not .detach()ed)")
    if first and not bool(torch.isfinite(per_sample.detach()).all()):
        bad = int((~torch.isfinite(per_sample.detach())).nonzero()[0, 0])
        raise TaskError(f"{hook} returned {float(per_sample.detach()[bad])} for sample {bad} of the first batch; the loss "
                        "must be finite (check the inputs, the model's initialisation and the learning rate)")


def nonfinite_scores_error(path: str, ids, scores, epoch: int) -> TaskError:
    import numpy as np
    bad = int(np.argmax(~np.isfinite(scores)))
    return TaskError(f"task {path!r}: loss(model, batch) returned {scores[bad]} for sample id {int(ids[bad])} in "
                     f"epoch {epoch}; the loss must be finite (lower the learning rate or check that sample)")


def summarize_metrics(task: Task, sums: dict) -> dict[str, float]:
    out = task.summarize(sums)
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def describe(path: str, args: dict) -> dict[str, Any]:
    return {"task": path, "task_args": dict(args)}
