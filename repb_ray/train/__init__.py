"""Training on Ray: the run's driver, the coordinator actor and its shards, and the worker side.

How one loss becomes the next epoch's plan, file by file and process by process, is in ARCHITECTURE.md
("The path of one loss"), the one place it is written down.

Public pieces: `Pruning` and `PruningSession` (your own Ray Train loop), `run_training` (the
framework's run), `PlanSummary`. Imported on first use, so `repb_ray.train.run_home` stays light.
"""

from __future__ import annotations

_EXPORTS = {
    "Pruning": "repb_ray.train.pruning",
    "PruningHandle": "repb_ray.train.pruning",
    "PruningSession": "repb_ray.train.session",
    "PlanSummary": "repb_ray.train.messages",
    "run_training": "repb_ray.train.driver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repb_ray.train' has no attribute {name!r}")
