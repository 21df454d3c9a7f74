"""TensorCollate: a Ray Data numpy batch as a dict of tensors without copying; "id" stays on the
CPU, the rest goes to the training device. Runs in every Train worker."""

from __future__ import annotations

import warnings

import torch
from ray.data.collate_fn import NumpyBatchCollateFn


class TensorCollate(NumpyBatchCollateFn):
    """Numpy batch -> dict of tensors without copying (read-only Arrow buffers are shared, so tasks
    must not write into their inputs in place); "id" stays on the CPU, the rest goes to `device`
    (from pinned memory, asynchronously, on CUDA)."""

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __call__(self, batch: dict) -> dict:
        cuda = self.device.type == "cuda"
        out = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for k, v in batch.items():
                t = torch.as_tensor(v)
                if k != "id" and self.device.type != "cpu":
                    t = (t.pin_memory() if cuda else t).to(self.device, non_blocking=cuda)
                out[k] = t
        return out
