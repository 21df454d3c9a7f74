"""The Task contract: the one seam through which a user's data, model, per-sample loss and metrics
enter repb_ray (Ray workers, the plain PyTorch loop, sweeps). Runs wherever the task is used.

Where each hook is called, and in which process (`repb-ray train`; the plain PyTorch loop and the
adapters call the same hooks in their own process):

| hook | called from | process (thread) |
|---|---|---|
| `__init__(**task_args)` | tasks.loader.TaskRef.load | the driver, every Train worker, every Ray Data task process (once each) |
| `train_dataset()` | train.driver.run_training | the driver (the dataset is lazy: nothing is read there) |
| `test_dataset()` | train.driver.run_training | the driver |
| `preprocess(batch)` | data.pipeline.apply_preprocess | Ray Data task processes, after the plan's pruning |
| `eval_preprocess(batch)` | data.pipeline.apply_preprocess | Ray Data task processes (the test set) |
| `model()` | train.loop.Worker, train.driver._final_model (the MLflow model) | every Train worker; the driver at the end |
| `loss(model, batch)` | torch.step.TrainStep.batch | every Train worker, each step (the training thread) |
| `metrics(model, batch)` | torch.step.metric_sums | every Train worker, after each epoch: in **another thread** under eval_mode async (see below) |
| `summarize(sums)` | torch.step.reduce_metric_sums | every Train worker (the training thread) |
| `input_example()` | train.driver.run_training (the MLflow model) | the driver, at the end |
| `summary_info(num_samples)` | train.summary.build_summary | the driver, at the end |

`metrics` runs in the evaluation's own thread (torch.evaluation.Evaluator) when `eval_mode` resolves to
async (auto: on a GPU, or where a host core is not held by training), else in the training thread: keep
what it uses (a tokenizer, a metrics object) thread-safe, or set eval_mode: sync. Every other hook runs
in the thread shown.
"""

from __future__ import annotations

import math

from repb_ray.errors import TaskError

REQUIRED = ("train_dataset", "model", "loss")


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
      summary_info(num_samples) -> dict        extra facts about the data for summary.json (optional)

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

    def summary_info(self, num_samples: int) -> dict:
        """What summary.json records about this task's data beyond its task_args (e.g. how many labels
        a noise regime flipped); optional."""
        return {}

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
