"""The typed messages between a run's processes: what a rank sends the coordinator (Observations,
EpochDone), what the coordinator publishes (PlanSummary) and how a rank reaches it (Routing).
Frozen dataclasses, shared by the sender, the actors and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from repb_ray.core.plan import EpochInfo

# The metric keys of an asynchronously evaluated epoch: its report says its test metrics are pending; the next
# report carries the completed row of that epoch.
EVAL_PENDING = "eval_pending"
EVAL_RESULT = "eval_result"
EVAL_SKIPPED = "eval_skipped"  # an epoch not evaluated (eval_every): its row has no test metrics, and Tune never gets it
CHECKPOINT_STEP = "checkpoint_step"  # a report of a checkpoint within an epoch (after this many steps), not an epoch
CHECKPOINT_KEEP = "checkpoint_keep"  # Ray Train keeps the checkpoints that score highest (and the latest): the epoch
                                     # of one taken at an epoch's end, -1 within an epoch


@dataclass(frozen=True)
class Observations:
    """One chunk of a rank's scores for one shard: runs of consecutive observations, run j holding
    run_sizes[j] samples of global step run_steps[j]. `seq` numbers the rank's chunks to that shard
    (0, 1, ...), so a late chunk is waited for and a duplicate ignored."""

    generation: str
    epoch: int
    rank: int
    shard: int
    seq: int
    run_steps: np.ndarray   # int64
    run_sizes: np.ndarray   # int64
    ids: np.ndarray         # int64
    scores: np.ndarray      # float32


@dataclass(frozen=True)
class EpochDone:
    """A rank finished its epoch after sending `chunks` Observations to shard `shard`."""

    generation: str
    epoch: int
    rank: int
    shard: int
    chunks: int


@dataclass(frozen=True)
class Routing:
    """Where a rank sends its observations: shard j owns ids [bounds[j][0], bounds[j][1]) and takes
    them at targets[j] (the coordinator itself when the shards live in its process)."""

    generation: str
    bounds: tuple
    targets: tuple


@dataclass(frozen=True)
class PlanSummary:
    """The published plan of one epoch, as every rank and the driver see it (the ids and weights
    themselves are served to the data tasks as plan chunks)."""

    generation: str
    epoch: int                 # the epoch this plan is for (1-based)
    kept: int                  # |D_E|
    num_samples: int
    digest: str                # plan_digest of the ids
    plan_sizes: tuple          # |D_1| .. |D_E|
    weight_mean: float
    weight_max: float
    decision: dict             # how the policy chose this plan (its DECISIONS keys)
    world_size: int
    budget: dict | None        # Policy.budget_status()
    timing: dict = field(default_factory=dict)  # seconds of the end of epoch that made it, per step; and
                                                # reads_waiting: the reads waiting for this plan when it came

    @property
    def info(self) -> EpochInfo:
        return EpochInfo(self.epoch, self.kept, self.num_samples, self.world_size, tuple(self.plan_sizes))
