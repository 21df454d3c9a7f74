"""Per-sample scores for pruning: the loss (default), the norm of the loss gradient at the model's
output (paper Table 9), or the exact per-sample gradient norm of the model's last nn.Linear
(its weight and bias). Runs in the training process, before backward."""

from __future__ import annotations

import numpy as np
import torch

from repb_ray.config import SCORES  # noqa: F401  (one list of score names)


class Scorer:
    """score(per_sample_loss) -> detached tensor [B]. For grad_norm a forward hook keeps the model's
    last output; the gradient of sum(loss) with respect to it is computed before backward (it does
    not touch the parameters, so DDP's reduction is unaffected). For cross-entropy this is
    ||softmax(z) - onehot(y)|| per sample. For last_layer_grad_norm a hook on the model's last
    nn.Linear keeps its input h and output z; with g = d sum(loss) / dz (sample i's own, as nothing
    after that layer mixes samples), sample i's gradient of its weight is sum_t g_it h_it^T and of its
    bias sum_t g_it, whose norm is exact without forming it (`linear_grad_norm`)."""

    def __init__(self, name: str, model: torch.nn.Module | None = None, task: str = "task"):
        if name not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got score={name!r}")
        self.name, self.task = name, task
        self.output = self.input = None
        self.layer = None
        self._hook = None
        if model is not None and name == "grad_norm":
            self._hook = model.register_forward_hook(self._keep)
        elif model is not None and name == "last_layer_grad_norm":
            linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
            if not linears:
                from repb_ray.task import TaskError
                raise TaskError(f"task {task!r}: score=last_layer_grad_norm needs an nn.Linear in the model (its "
                                "last one is scored); use score=grad_norm or score=loss for this model")
            self.layer = linears[-1]
            self._hook = self.layer.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.input, self.output = (inputs[0] if inputs else None), output

    def __call__(self, per_sample: torch.Tensor) -> torch.Tensor:
        if self.name == "loss":
            return per_sample.detach()
        if self.name == "last_layer_grad_norm":
            (g,) = torch.autograd.grad(per_sample.sum(), self.output, retain_graph=True)
            return linear_grad_norm(self.input.detach(), g.detach(), self.layer.bias is not None)
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


def linear_grad_norm(h: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Per-sample ||d loss_i / d (W, b)|| of a linear layer from its input h [B, ..., in] and the
    gradient g [B, ..., out] at its output: ||sum_t g_t h_t^T||^2 = sum_{t,s} (g_t . g_s)(h_t . h_s),
    plus ||sum_t g_t||^2 for the bias; in float32."""
    b = h.shape[0]
    h, g = h.float().reshape(b, -1, h.shape[-1]), g.float().reshape(b, -1, g.shape[-1])
    if h.shape[1] == 1:
        sq = g[:, 0].square().sum(1) * h[:, 0].square().sum(1)
    else:
        sq = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(h, h.transpose(1, 2))).sum((1, 2))
    if bias:
        sq = sq + g.sum(1).square().sum(1)
    return sq.sqrt()


def grad_norm_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """||softmax(z) - onehot(y)||_2: the closed form for cross-entropy (reference for tests)."""
    with torch.no_grad():
        p = torch.softmax(logits.detach().float(), dim=1)
        p[torch.arange(p.shape[0], device=p.device), targets] -= 1.0
        return p.norm(dim=1).cpu().numpy()
