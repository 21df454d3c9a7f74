"""Per-sample losses from a Hugging Face model's outputs, which only ever return the batch's reduced
loss: cross-entropy per sequence (classification, or regression's squared error), and the mean token
loss of each sequence for causal LMs (labels shifted, padding and -100 masked). Plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def logits_of(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs[0]


def sequence_classification(outputs, labels: torch.Tensor) -> torch.Tensor:
    """[B]: cross-entropy of each sequence's logits (squared error when the model has one output)."""
    logits = logits_of(outputs)
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return (logits.squeeze(-1).float() - labels.float()) ** 2
    return F.cross_entropy(logits.float(), labels, reduction="none")


def causal_lm(outputs, labels: torch.Tensor) -> torch.Tensor:
    """[B]: the mean next-token loss of each sequence over its real tokens (label -100 is not counted;
    labels are the inputs, shifted here as the models shift them)."""
    logits = logits_of(outputs)[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(target.shape)
    mask = (target != IGNORE).float()
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def auto(outputs, labels: torch.Tensor) -> torch.Tensor:
    """Sequence classification for logits [B, C], causal LM for logits [B, T, V]."""
    return causal_lm(outputs, labels) if logits_of(outputs).ndim == 3 else sequence_classification(outputs, labels)


LOSSES = {"auto": auto, "sequence_classification": sequence_classification, "causal_lm": causal_lm}
