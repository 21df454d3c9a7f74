"""PlanIndex: the published plan of an epoch as id-range chunks in the object store; ReadEpoch: which
epoch an execution of the train data serves (known before its plan); the per-process lookup that
fetches only the chunks a block's ids need. Runs in Ray Data tasks."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from repb_ray.core import rng


@dataclass(frozen=True)
class ReadEpoch:
    """The epoch an execution of the train data serves (rank 0 names it before the ranks iterate, possibly
    before its plan is decided), with what reads need before the plan: its block order's inputs."""

    generation: str
    epoch: int
    seed: int
    num_samples: int
    timeout_s: float  # how long a read waits for the plan


def block_order(seed: int, epoch: int, num_blocks: int) -> np.ndarray:
    """The order in which an epoch serves a source's blocks: a pure function of (seed, epoch)."""
    return rng.block_order(seed, epoch).permutation(num_blocks)


@dataclass(frozen=True)
class PlanIndex:
    """Entry j covers ids [los[j], his[j]); refs[j] is its PlanChunk."""

    generation: str
    epoch: int
    seed: int
    num_samples: int
    los: np.ndarray
    his: np.ndarray
    refs: tuple

    def entries(self, lo: int, hi: int) -> range:
        """Indices of the entries that overlap ids [lo, hi)."""
        a = int(np.searchsorted(self.his, lo, side="right"))
        b = int(np.searchsorted(self.los, hi, side="left"))
        return range(a, b)

    def row_order(self, first_id: int, rows: int) -> np.ndarray:
        """The order of a block's kept rows this epoch: a pure function of (seed, epoch, block)."""
        return rng.row_order(self.seed, self.epoch, first_id).permutation(rows)


class PlanLookup:
    """Per process: the chunks fetched so far (a small LRU), and membership/weights for id arrays."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._chunks: OrderedDict = OrderedDict()

    def _chunk(self, index: PlanIndex, j: int):
        # keyed by the chunk's first id: j is a position in `index`, which read tasks slice
        key = (index.generation, index.epoch, int(index.los[j]))
        chunk = self._chunks.get(key)
        if chunk is None:
            import ray
            chunk = ray.get(index.refs[j])
            self._chunks[key] = chunk
            while len(self._chunks) > self.capacity:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return chunk

    def keep_and_weights(self, index: PlanIndex, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the ids in the plan, float32 weights of those ids in order)."""
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            return np.zeros(0, bool), np.zeros(0, np.float32)
        lo, hi = int(ids.min()), int(ids.max()) + 1
        if lo < 0 or hi > index.num_samples:
            bad = int(ids[(ids < 0) | (ids >= index.num_samples)][0])
            raise ValueError(f"id {bad} is outside [0, {index.num_samples}); the train dataset's ids must be 0..n-1")
        js = index.entries(lo, hi)
        if len(js) == 1:
            return self._chunk(index, js[0]).lookup(ids)
        keep = np.zeros(ids.shape[0], bool)
        weights = np.zeros(ids.shape[0], np.float32)
        owner = np.searchsorted(index.his, ids, side="right")
        for j in js:
            sel = np.flatnonzero(owner == j)
            if sel.size:
                k, w = self._chunk(index, j).lookup(ids[sel])
                keep[sel] = k
                weights[sel[k]] = w
        return keep, weights[keep]


LOOKUP = PlanLookup()
_INDEX: dict = {}  # per process: the last (generation, epoch) read and its PlanIndex


def read_epoch(source) -> ReadEpoch:
    """The epoch the coordinator `source` says the current execution serves (one small actor call)."""
    import ray
    return ray.get(source.read_epoch.remote())


def plan_for(source, read: ReadEpoch) -> PlanIndex:
    """The PlanIndex of `read`'s epoch, once the coordinator `source` publishes it (fetched once per process
    and epoch); a read that got here before the plan waits for it."""
    key = (read.generation, read.epoch)
    index = _INDEX.get(key)
    if index is None:
        import ray
        index = ray.get(source.wait_index.remote(read.generation, read.epoch, read.timeout_s))
        _INDEX.clear()
        _INDEX[key] = index
    return index
