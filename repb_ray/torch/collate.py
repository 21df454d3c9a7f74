"""A numpy batch as a dict of tensors without copying: "id" stays on the CPU, the rest goes to the
device (from pinned memory, asynchronously, on CUDA). Plain PyTorch: Ray Data's collate and the GPU
check share it. Runs in every training process."""

from __future__ import annotations

import warnings

import torch


def to_tensors(batch: dict, device: torch.device) -> dict:
    """Read-only Arrow buffers are shared, not copied: tasks must not write into their inputs in place."""
    cuda = device.type == "cuda"
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k, v in batch.items():
            t = torch.as_tensor(v)
            if k != "id" and device.type != "cpu":
                t = (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)
            out[k] = t
    return out
