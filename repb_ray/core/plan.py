"""EpochPlan: the ids of D_E (sorted int64) and their loss weights (float32); runs anywhere."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def plan_digest(ids: np.ndarray) -> str:
    """sha256 of the sorted plan ids as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """The training set of one epoch: `ids` sorted and unique, `weights[j]` applies to `ids[j]`."""

    epoch: int
    ids: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        assert self.ids.dtype == np.int64 and self.weights.dtype == np.float32
        assert self.ids.shape == self.weights.shape and self.ids.ndim == 1
        self.ids.flags.writeable = False
        self.weights.flags.writeable = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def digest(self) -> str:
        return plan_digest(self.ids)

    def weights_for(self, ids: np.ndarray) -> np.ndarray:
        """The weight of each id in `ids` (all must be in the plan)."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        bad = (pos >= len(self)) | (self.ids[np.minimum(pos, max(len(self) - 1, 0))] != ids)
        if len(self) == 0 or bad.any():
            first = int(ids[np.argmax(bad)]) if len(self) else int(ids[0])
            raise KeyError(f"id {first} is not in the plan of epoch {self.epoch}")
        return self.weights[pos]

    def dense_weights(self, num_samples: int) -> np.ndarray:
        """float32[num_samples]: the weight of every id in the plan, NaN for ids left out."""
        out = np.full(num_samples, np.nan, dtype=np.float32)
        out[self.ids] = self.weights
        return out

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "ids": self.ids, "weights": self.weights}

    @classmethod
    def from_dict(cls, d: dict) -> "EpochPlan":
        return cls(int(d["epoch"]), np.array(d["ids"], dtype=np.int64),
                   np.array(d["weights"], dtype=np.float32))
