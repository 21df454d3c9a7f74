"""Per-sample scores for pruning: the loss (default) or the norm of the loss gradient at the model's
output (paper Table 9), for any task whose model returns one tensor with the batch first."""

from __future__ import annotations

import numpy as np
import torch

from repb_ray.config import SCORES  # noqa: F401  (one list of score names)


class Scorer:
    """score(per_sample_loss) -> detached tensor [B]. For grad_norm a forward hook keeps the model's
    last output; the gradient of sum(loss) with respect to it is computed before backward (it does
    not touch the parameters, so DDP's reduction is unaffected). For cross-entropy this is
    ||softmax(z) - onehot(y)|| per sample."""

    def __init__(self, name: str, model: torch.nn.Module | None = None, task: str = "task"):
        if name not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got score={name!r}")
        self.name, self.task = name, task
        self.output = None
        self._hook = model.register_forward_hook(self._keep) if name == "grad_norm" and model is not None else None

    def _keep(self, module, inputs, output) -> None:
        self.output = output

    def __call__(self, per_sample: torch.Tensor) -> torch.Tensor:
        if self.name == "loss":
            return per_sample.detach()
        out = self.output
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != per_sample.shape[0]:
            from repb_ray.task import TaskError
            raise TaskError(f"task {self.task!r}: score=grad_norm needs the model's forward to return one tensor "
                            f"with the batch first, got {type(out).__name__}; use score=loss for this task")
        (grad,) = torch.autograd.grad(per_sample.sum(), out, retain_graph=True)
        return grad.detach().flatten(1).norm(dim=1) if grad.ndim > 1 else grad.detach().abs()

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()


def grad_norm_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """||softmax(z) - onehot(y)||_2: the closed form for cross-entropy (reference for tests)."""
    with torch.no_grad():
        p = torch.softmax(logits.detach().float(), dim=1)
        p[torch.arange(p.shape[0], device=p.device), targets] -= 1.0
        return p.norm(dim=1).cpu().numpy()
