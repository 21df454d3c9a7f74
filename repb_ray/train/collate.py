"""TensorCollate: Ray Data's collate of a numpy batch into a dict of tensors (torch/collate.py: without
copying; "id" stays on the CPU, the rest goes to the training device). Runs in every Train worker."""

from __future__ import annotations

import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from repb_ray.torch.collate import to_tensors


class TensorCollate(NumpyBatchCollateFn):
    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __call__(self, batch: dict) -> dict:
        return to_tensors(batch, self.device)
