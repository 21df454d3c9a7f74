"""Checkpoint files of a run: model, optimizer, LR schedule, coordinator state, epoch history."""

from __future__ import annotations

import json
import os

import torch

from repb_ray.core.state_io import load_state, save_state


def save(directory: str, *, model, optimizer, schedule, policy_state: dict, epoch: int, history: list) -> None:
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    save_state(os.path.join(directory, "coordinator.npz"), policy_state)
    with open(os.path.join(directory, "meta.json"), "w") as fh:
        json.dump({"epoch": epoch, "schedule": schedule.state_dict(), "history": history}, fh)


def load(directory: str, *, model, optimizer, schedule, map_location="cpu") -> tuple[int, list, dict]:
    """Restores model, optimizer and schedule in place; returns (epoch, history, policy_state)."""
    model.load_state_dict(torch.load(os.path.join(directory, "model.pt"), map_location=map_location))
    optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), map_location=map_location))
    with open(os.path.join(directory, "meta.json")) as fh:
        meta = json.load(fh)
    schedule.load_state_dict(meta["schedule"])
    return int(meta["epoch"]), list(meta["history"]), load_state(os.path.join(directory, "coordinator.npz"))
