"""Checkpoint files of a run: model, optimizer, LR schedule, epoch history, and the name of the
coordinator's state of that epoch (relative to the run's storage: no path, no credential). Loading
runs no code from storage: tensors with torch.load(weights_only=True), the rest JSON. Runs in every
Train worker (rank 0 writes) and in the driver (logging the model)."""

from __future__ import annotations

import json
import os

import torch

from repb_ray.errors import RunError

MODEL, OPTIMIZER, META, COORDINATOR = "model.pt", "optimizer.pt", "meta.json", "coordinator.json"


def save(directory: str, *, model, optimizer, schedule, epoch: int, history: list, state: str | None,
         extra: dict | None = None) -> None:
    torch.save(model.state_dict(), os.path.join(directory, MODEL))
    torch.save(optimizer.state_dict(), os.path.join(directory, OPTIMIZER))
    with open(os.path.join(directory, COORDINATOR), "w") as fh:
        json.dump({"state": state}, fh)
    with open(os.path.join(directory, META), "w") as fh:
        json.dump({"epoch": epoch, "schedule": schedule.state_dict(), "history": history, **(extra or {})}, fh)


def buffers_name(rank: int) -> str:
    """A rank's own buffers (BatchNorm statistics), saved beside the model when its evaluation is pending."""
    return f"buffers_rank{rank:04d}.pt"


def save_buffers(directory: str, model, rank: int) -> bool:
    """This rank's buffers of `model` into the checkpoint folder; False (nothing written) when it has none."""
    buffers = {k: v.detach().cpu() for k, v in model.named_buffers()}
    if buffers:
        torch.save(buffers, os.path.join(directory, buffers_name(rank)))
    return bool(buffers)


def load_buffers(directory: str, rank: int, map_location="cpu") -> dict | None:
    """This rank's saved buffers, or None when the checkpoint has none for it (then the model's are rank 0's)."""
    path = os.path.join(directory, buffers_name(rank))
    return load_tensors(path, map_location) if os.path.exists(path) else None


def load_tensors(path: str, map_location="cpu"):
    """A tensor file of a checkpoint: plain tensors and containers only. Anything else (a pickled
    object, whose loading could run code) is refused in one line and never unpickled."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"checkpoint file {path} is missing; the checkpoint is incomplete: start the run over "
                       "with --overwrite, or restore the file") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"checkpoint file {path} holds more than plain tensors and was not loaded ({first[:160]}); it "
                       "was not written by repb_ray or was changed since: start the run over with --overwrite, or "
                       "restore the file from a copy you trust") from None


def read_json(directory: str, name: str) -> dict:
    path = os.path.join(directory, name)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RunError(f"checkpoint file {path} is missing or not valid JSON ({type(exc).__name__}); start the run "
                       "over with --overwrite") from None
    if not isinstance(data, dict):
        raise RunError(f"checkpoint file {path} is not a JSON object; start the run over with --overwrite")
    return data


def load(directory: str, *, model, optimizer, schedule, map_location="cpu") -> tuple[int, list, str | None, dict]:
    """Restores model, optimizer and schedule in place; returns (epoch, history, the coordinator
    state's name, the rest of meta.json)."""
    model.load_state_dict(load_tensors(os.path.join(directory, MODEL), map_location))
    optimizer.load_state_dict(load_tensors(os.path.join(directory, OPTIMIZER), map_location))
    meta = read_json(directory, META)
    state = read_json(directory, COORDINATOR).get("state")
    if state is not None and (not isinstance(state, str) or "/" in state or state.startswith(".")):
        raise RunError(f"checkpoint {directory} names coordinator state {state!r}, which is not a state of this "
                       "run; start the run over with --overwrite")
    schedule.load_state_dict(meta["schedule"])
    return int(meta["epoch"]), list(meta["history"]), state, meta
