"""Checkpoint files of a run: model, optimizer, LR schedule, epoch history, and where the
coordinator's state of that epoch lies (each shard wrote its own file there)."""

from __future__ import annotations

import json
import os

import torch

from repb_ray.train.pruning import read_state_pointer, write_state_pointer


def save(directory: str, *, model, optimizer, schedule, epoch: int, history: list, state_location: str | None) -> None:
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    write_state_pointer(directory, state_location)
    with open(os.path.join(directory, "meta.json"), "w") as fh:
        json.dump({"epoch": epoch, "schedule": schedule.state_dict(), "history": history}, fh)


def load(directory: str, *, model, optimizer, schedule, map_location="cpu") -> tuple[int, list, str | None]:
    """Restores model, optimizer and schedule in place; returns (epoch, history, coordinator state location)."""
    model.load_state_dict(torch.load(os.path.join(directory, "model.pt"), map_location=map_location))
    optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), map_location=map_location))
    with open(os.path.join(directory, "meta.json")) as fh:
        meta = json.load(fh)
    schedule.load_state_dict(meta["schedule"])
    return int(meta["epoch"]), list(meta["history"]), read_state_pointer(directory)
