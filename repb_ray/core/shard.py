"""Shard: the per-sample state of one id range [lo, hi) and the steps of the end-of-epoch protocol
that only need that range; a policy conducts the steps over all shards. Runs anywhere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repb_ray.core.observations import ObservationBuffer
from repb_ray.core.plan import PlanChunk, digest_parts, merge_digest_parts
from repb_ray.core.protocol import step, steps_of

MAX_EPOCHS = np.iinfo(np.uint16).max - 1  # selection counts N_i are uint16


@dataclass
class Scratch:
    """What a shard's protocol steps hand each other within one end of epoch (`Shard.tmp`, cleared at
    `commit`): `keep`, the proposed plan over the range. A policy's shard adds its own fields."""

    keep: np.ndarray | None = None

    def need(self, name: str):
        """The field's value, which an earlier step of this end of epoch set."""
        value = getattr(self, name)
        assert value is not None, f"protocol step order: {name} is not set"
        return value

    def take(self, name: str):
        """The field's value, cleared (a value used once)."""
        value = self.need(name)
        setattr(self, name, None)
        return value


class Shard:
    """counts N_i (uint16), membership of the current plan (bool), the epoch's observations, and
    what a subclass adds (STATE lists the arrays saved with the state). Temporary results of the
    protocol's steps live in `self.tmp` (a SCRATCH) until `commit`."""

    STATE: tuple[str, ...] = ("counts", "in_plan")
    SCRATCH: type[Scratch] = Scratch
    tmp: Scratch
    STEPS: frozenset = frozenset()   # the protocol steps (methods marked @step), set when a subclass is defined

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.STEPS = steps_of(cls)

    def __init__(self, lo: int, hi: int, spec):
        self.lo, self.hi, self.span = lo, hi, hi - lo
        self.spec = spec                 # name, num_samples, seed, params (shared, read-only)
        self.counts = np.zeros(self.span, np.uint16)
        self.in_plan = np.zeros(self.span, bool)
        self.plan_size = 0
        self.epoch = 0
        self.buf = ObservationBuffer()
        self.tmp = self.SCRATCH()
        self.setup()

    def setup(self) -> None:
        """Allocate the subclass's per-sample arrays."""

    # -- observations --------------------------------------------------------------------------------
    def observe(self, step, ids, scores) -> None:
        """One global step's observations (`step` an int: the hot path) or one step per sample."""
        if isinstance(step, (int, np.integer)):
            self.buf.add_batch(step, ids, scores)
        else:
            self.buf.add(step, ids, scores)

    def observe_runs(self, run_steps, run_sizes, ids, scores) -> None:
        self.buf.add_runs(run_steps, run_sizes, ids, scores)

    # -- protocol steps shared by every policy -------------------------------------------------------
    @step
    def validate(self) -> dict:
        """Cheap whole-epoch checks; returns the number observed, max |score| and max step."""
        ids, scores = self.buf.arrays()
        m, n, e = ids.shape[0], self.spec.num_samples, self.epoch
        if m and not np.isfinite(np.add.reduce(scores, dtype=np.float64)):
            bad = int(np.argmax(~np.isfinite(scores)))
            raise ValueError(f"scores must be finite, got score {scores[bad]} for id {ids[bad]} in epoch {e}; "
                             "check the loss for NaN/inf before observing it")
        if m and (ids.min() < self.lo or ids.max() >= self.hi):
            bad = int(ids[(ids < self.lo) | (ids >= self.hi)][0])
            if 0 <= bad < n:  # a valid id routed to the wrong shard: a bug in the caller's routing
                raise ValueError(f"id {bad} was sent to the shard of ids [{self.lo}, {self.hi}); route each id "
                                 "to the shard whose range holds it")
            raise ValueError(f"observed id {bad} is outside [0, {n}) in epoch {e}; ids must be the dataset's sample ids")
        steps = np.array(self.buf.run_steps, np.int64)
        if steps.size and steps.min() < 0:
            raise ValueError(f"steps must be >= 0 (the global step within the epoch), got {int(steps.min())}")
        if m != self.plan_size:
            self.explain_mismatch()
        return {"m": m, "max_abs": max(float(scores.max()), -float(scores.min())) if m else 0.0,
                "max_step": int(steps.max()) if steps.size else -1}

    def seen(self, flags: np.ndarray | None = None) -> np.ndarray:
        """uint8 over the range: 0 for ids not observed, 1 + flags[j] for observation j's id; checks
        that exactly the plan's ids were observed, once each (validate checked the count)."""
        ids, _ = self.buf.arrays()
        state = np.zeros(self.span, np.uint8)
        local = ids - self.lo if self.lo else ids
        state[local] = 1 if flags is None else flags.view(np.uint8) + np.uint8(1)
        if np.count_nonzero(state) != self.plan_size or (state.view(bool) & ~self.in_plan).any():
            self.explain_mismatch()
        return state

    def explain_mismatch(self) -> None:
        ids, _ = self.buf.arrays()
        local = ids - self.lo
        outside = ~self.in_plan[local]
        e = self.epoch
        if outside.any():
            raise ValueError(f"id {int(ids[outside][0])} was observed in epoch {e} but is not in that epoch's plan; "
                             "observe only samples served from the current plan")
        counts = np.bincount(local, minlength=self.span)
        if (counts > 1).any():
            j = int(np.argmax(counts > 1))
            raise ValueError(f"id {j + self.lo} was observed {int(counts[j])} times in epoch {e}; each sample of the "
                             "plan must be observed exactly once (did two ranks or a retried step report it?)")
        missing = np.flatnonzero(self.in_plan & (counts == 0)) + self.lo
        raise ValueError(f"{missing.size} of the {self.plan_size} samples in the plan of epoch {e} were never "
                         f"observed (first ids: {missing[:5].tolist()}); observe every trained sample before "
                         "finish_epoch")

    @step
    def check_once(self) -> None:
        """The exactly-once check of `seen`, for policies that do not use the scores."""
        self.seen()

    @step
    def current_counts(self) -> np.ndarray:
        return self.counts.copy()

    @step
    def current_size(self) -> int:
        return self.plan_size

    @step
    def keep_all(self) -> int:
        self.tmp.keep = np.ones(self.span, bool)
        return self.span

    def keep_mask(self, keep: np.ndarray) -> int:
        self.tmp.keep = keep
        return int(np.count_nonzero(keep))

    @step
    def commit(self, epoch: int, drop: list, info: dict) -> int:
        """Make the proposed `tmp.keep`, minus the positions (ranks among the kept ids of this
        range) in `drop`, the plan of `epoch`; count it in N_i. Returns the plan size here."""
        if epoch > MAX_EPOCHS:
            raise ValueError(f"epoch {epoch} exceeds the {MAX_EPOCHS} epochs that the uint16 counts hold")
        keep = self.tmp.take("keep")
        if len(drop):
            keep[np.flatnonzero(keep)[np.asarray(drop, np.int64)]] = False
        self.before_commit(epoch, keep, info)
        self.in_plan = keep
        self.counts += keep
        self.plan_size = int(np.count_nonzero(keep))
        self.epoch = epoch
        self.tmp = self.SCRATCH()
        self.buf.reset(self.plan_size)
        return self.plan_size

    def before_commit(self, epoch: int, keep: np.ndarray, info: dict) -> None:
        """Subclass hook: update per-sample state for the new plan (counts not yet incremented)."""

    @step
    def retrim(self, drop: list) -> int:
        """Move the kept ids at positions `drop` out of the current plan (resuming on another world
        size): they count as not trained in this epoch."""
        local = np.flatnonzero(self.in_plan)[np.asarray(drop, np.int64)]
        self.in_plan[local] = False
        self.counts[local] -= 1
        self.plan_size -= len(local)
        self.buf.reset(self.plan_size)
        return self.plan_size

    # -- the plan ------------------------------------------------------------------------------------
    def plan_local(self) -> np.ndarray:
        return np.flatnonzero(self.in_plan)

    def weights_of(self, local: np.ndarray) -> np.ndarray:
        """float32 loss weights of the plan members at local positions (sorted)."""
        return np.ones(local.shape[0], np.float32)

    @step
    def plan_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        local = self.plan_local()
        return (local + self.lo if self.lo else local), self.weights_of(local)

    def digest_parts(self) -> tuple[int, int, int]:
        return digest_parts(self.plan_local() + self.lo)

    def publish(self, chunk: int) -> tuple[list[PlanChunk], tuple]:
        """The plan of this range as PlanChunks of at most `chunk` ids and, from the same pass, its
        summary parts: (size, float64 sum of the weights, max weight, digest_parts). One pass over
        cache-sized pieces: no temporary as large as the range."""
        out, pieces, total, top = [], [], 0.0, 0.0
        for a in range(0, self.span, chunk):
            b = min(a + chunk, self.span)
            mask = self.in_plan[a:b]
            local = np.flatnonzero(mask)
            local += a
            w = self.weights_of(local)
            out.append(PlanChunk.from_mask(self.epoch, self.lo + a, mask, w))
            if local.size:
                if self.lo:
                    local += self.lo
                pieces.append(digest_parts(local))
                total += float(w.sum(dtype=np.float64))
                top = max(top, float(w.max()))
        digest = merge_digest_parts(pieces)
        return out, (digest[0], total, top, digest)

    # -- state ---------------------------------------------------------------------------------------
    def state_arrays(self) -> dict:
        out = {k: getattr(self, k).copy() for k in self.STATE}
        ids, scores = self.buf.arrays()
        out.update(pending_steps=self.buf.steps(), pending_ids=ids.copy(), pending_scores=scores.copy())
        return out

    def state_scalars(self) -> dict:
        """Per-epoch scalars of the shard (the same on every shard)."""
        return {}

    def load_arrays(self, arrays: dict, epoch: int) -> None:
        """Take this range's slice of whole-dataset state arrays (and the scalars beside them)."""
        for k in self.STATE:
            cur = getattr(self, k)
            a = np.asarray(arrays[k])
            if a.shape[0] == self.span:
                part = a
            else:
                part = a[self.lo:self.hi]
            setattr(self, k, np.array(part, dtype=cur.dtype, copy=True))
        self.epoch = epoch
        self.plan_size = int(np.count_nonzero(self.in_plan))
        self.buf.reset(self.plan_size)
        ids = np.asarray(arrays["pending_ids"], np.int64)
        mine = (ids >= self.lo) & (ids < self.hi)
        if mine.any():
            self.buf.add(np.asarray(arrays["pending_steps"], np.int64)[mine].copy(), ids[mine].copy(),
                         np.asarray(arrays["pending_scores"], np.float32)[mine].copy())
        self.tmp = self.SCRATCH()

    def nbytes(self) -> dict:
        """Resident bytes: per-sample state and the observation buffer."""
        return {"state": sum(getattr(self, k).nbytes for k in self.STATE), "buffer": self.buf.nbytes()}


Shard.STEPS = steps_of(Shard)
