"""EpochPlan (the ids of D_E and their loss weights), the plan digest, and plan chunks for serving
an epoch by id range; runs anywhere."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_M1, _M2, _M3 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0xD6E8FEB86659FD93)
_SEED = np.uint64(0x9E3779B97F4A7C15)
_S27, _S30, _S31, _S32 = (np.uint64(k) for k in (27, 30, 31, 32))


def digest_parts(ids: np.ndarray) -> tuple[int, int, int]:
    """(count, sum of h1, sum of h2) mod 2**64 over a set of ids, h1 = splitmix64(id + seed) and
    h2 = a second bijective mix of h1: add parts of disjoint sets to get the parts of their union,
    in any order. In place, two temporaries (it runs on every plan publication)."""
    x = np.ascontiguousarray(ids, np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = x + _SEED
        t = np.empty_like(z)
        for shift, mult in ((_S30, _M1), (_S27, _M2)):
            np.right_shift(z, shift, out=t)
            z ^= t
            z *= mult
        np.right_shift(z, _S31, out=t)
        z ^= t
        a = int(z.sum(dtype=np.uint64))
        z *= _M3
        np.right_shift(z, _S32, out=t)
        z ^= t
        return int(x.shape[0]), a, int(z.sum(dtype=np.uint64))


def merge_digest_parts(parts) -> tuple[int, int, int]:
    """digest_parts of the union of disjoint id sets, from the parts of each."""
    count, a, b = 0, 0, 0
    for c, x, y in parts:
        count, a, b = count + c, (a + x) % (1 << 64), (b + y) % (1 << 64)
    return count, a, b


def combine_digest(parts) -> str:
    """The plan digest from digest_parts of disjoint pieces of one plan."""
    count, a, b = merge_digest_parts(parts)
    return hashlib.sha256(f"{count}:{a:016x}:{b:016x}".encode()).hexdigest()


def plan_digest(ids: np.ndarray) -> str:
    """A digest of the set of plan ids (sha256 over a 128-bit additive hash and the size): the same
    whether it is computed on the whole plan or summed from id-range shards."""
    return combine_digest([digest_parts(ids)])


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

    def chunks(self, num_samples: int, chunk: int) -> list[PlanChunk]:
        """The plan as PlanChunks of `chunk` ids each over [0, num_samples)."""
        out = []
        for lo in range(0, num_samples, chunk):
            hi = min(lo + chunk, num_samples)
            a, b = np.searchsorted(self.ids, [lo, hi])
            mask = np.zeros(hi - lo, bool)
            mask[self.ids[a:b] - lo] = True
            out.append(PlanChunk.from_mask(self.epoch, lo, mask, self.weights[a:b]))
        return out


@dataclass(frozen=True, eq=False)
class PlanChunk:
    """The plan over ids [lo, hi): a packed membership bitmask (1 bit per id) and the float32
    weights of the member ids in id order. What a data task fetches for its rows."""

    epoch: int
    lo: int
    hi: int
    bits: np.ndarray      # uint8, np.packbits of the membership mask (little bit order)
    weights: np.ndarray   # float32 [number of members]

    @classmethod
    def from_mask(cls, epoch: int, lo: int, mask: np.ndarray, weights: np.ndarray) -> PlanChunk:
        assert weights.shape[0] == int(np.count_nonzero(mask))
        return cls(epoch, lo, lo + mask.shape[0], np.packbits(mask, bitorder="little"),
                   np.ascontiguousarray(weights, np.float32))

    @property
    def kept(self) -> int:
        return int(self.weights.shape[0])

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.bits, count=self.hi - self.lo, bitorder="little").view(bool)

    def lookup(self, ids: np.ndarray):
        """(in_plan mask, weights of the ids that are in the plan) for ids within [lo, hi)."""
        member = self.mask()
        local = ids - self.lo
        keep = member[local]
        rank = np.cumsum(member, dtype=np.int64) - 1
        return keep, self.weights[rank[local[keep]]]


def pruned_fraction(plan_sizes, num_samples: int) -> float:
    """1 - sum_E |D_E| / (E n) over the epochs whose plan sizes are given: the one formula for an
    epoch's pruned fraction (one size) and a run's (all of them)."""
    sizes = list(plan_sizes)
    if not sizes:
        raise ValueError("pruned_fraction needs at least one epoch's plan size")
    return 1.0 - sum(sizes) / (len(sizes) * num_samples)


@dataclass(frozen=True)
class EpochInfo:
    """One epoch as every loop sees it, whichever process holds the policy: the epoch (1-based), its
    plan's size |D_E| of n samples, the world size the plan was trimmed for, and |D_1| .. |D_E|."""

    epoch: int
    kept: int
    num_samples: int
    world_size: int
    plan_sizes: tuple

    @property
    def per_rank(self) -> int:
        """Samples of each rank in this epoch (the plan's size is a multiple of the world size)."""
        return self.kept // self.world_size

    @property
    def pruned_fraction(self) -> float:
        return pruned_fraction([self.kept], self.num_samples)

    @property
    def cum_pruned_fraction(self) -> float:
        """Over epochs 1..E, this one included."""
        return pruned_fraction(self.plan_sizes[: self.epoch], self.num_samples)

    def log(self) -> dict:
        """The epoch's row of an adapter's epochs_log."""
        return {"epoch": self.epoch, "kept": self.kept, "pruned_fraction": self.pruned_fraction}
