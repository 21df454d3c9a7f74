"""Buffers one epoch's (step, id, score) observations and aligns them to the plan; runs anywhere."""

from __future__ import annotations

import numpy as np

_KINDS = (("steps", np.dtype(np.int64)), ("ids", np.dtype(np.int64)), ("scores", np.dtype(np.float32)))
_I64, _F32 = np.dtype(np.int64), np.dtype(np.float32)


def _explain_bad_arrays(steps, ids, scores) -> None:
    """Raise the error that says what is wrong with the arguments of observe."""
    for (name, dtype), a in zip(_KINDS, (steps, ids, scores)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array of {dtype.name}, got {type(a).__name__}; "
                            f"convert with np.asarray({name}, dtype=np.{dtype.name})")
        if a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype.name}, got {name}.dtype={a.dtype}; "
                            f"convert with {name}.astype(np.{dtype.name})")
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got {name}.shape={a.shape}; pass one value per sample")
    raise ValueError(f"steps, ids and scores must have the same length, got "
                     f"{steps.shape[0]}, {ids.shape[0]}, {scores.shape[0]}")


class ObservationBuffer:
    """Growable copies of the observations in arrival order; `align` checks them against the plan
    and orders them by plan position. Finiteness is checked once, in `align` (vectorised)."""

    def __init__(self, capacity: int = 1024):
        self._steps = np.empty(capacity, np.int64)
        self._ids = np.empty(capacity, np.int64)
        self._scores = np.empty(capacity, np.float32)
        self.size = 0

    def reserve(self, capacity: int) -> None:
        if capacity > self._ids.shape[0]:
            for name in ("_steps", "_ids", "_scores"):
                old = getattr(self, name)
                new = np.empty(capacity, old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)

    def add(self, steps: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        if not (type(steps) is np.ndarray and type(ids) is np.ndarray and type(scores) is np.ndarray
                and steps.dtype is _I64 and ids.dtype is _I64 and scores.dtype is _F32
                and steps.ndim == 1 and ids.ndim == 1 and scores.ndim == 1
                and steps.shape[0] == ids.shape[0] == scores.shape[0]):
            if not (isinstance(steps, np.ndarray) and isinstance(ids, np.ndarray)
                    and isinstance(scores, np.ndarray) and steps.dtype == _I64 and ids.dtype == _I64
                    and scores.dtype == _F32 and steps.ndim == ids.ndim == scores.ndim == 1
                    and steps.shape[0] == ids.shape[0] == scores.shape[0]):
                _explain_bad_arrays(steps, ids, scores)
        m, start = ids.shape[0], self.size
        if start + m > self._ids.shape[0]:
            self.reserve(max(2 * self._ids.shape[0], start + m))
        self._steps[start:start + m] = steps
        self._ids[start:start + m] = ids
        self._scores[start:start + m] = scores
        self.size = start + m

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of (steps, ids, scores) observed so far, in arrival order."""
        n = self.size
        return self._steps[:n], self._ids[:n], self._scores[:n]

    def clear(self) -> None:
        self.size = 0

    def align(self, plan_ids: np.ndarray, num_samples: int, epoch: int):
        """(steps, scores) with entry j for plan_ids[j]; raises if a score is not finite, any plan id
        is missing or repeated, or an id outside the plan was observed."""
        steps, ids, scores = self.arrays()
        k = plan_ids.shape[0]
        if not np.isfinite(np.add.reduce(scores, dtype=np.float64)):
            bad = int(np.argmax(~np.isfinite(scores)))
            raise ValueError(f"scores must be finite, got score {scores[bad]} for id {ids[bad]} in epoch "
                             f"{epoch}; check the loss for NaN/inf before observing it")
        if ids.size and (ids.min() < 0 or ids.max() >= num_samples):
            bad = int(ids[(ids < 0) | (ids >= num_samples)][0])
            raise ValueError(f"observed id {bad} is outside [0, {num_samples}) in epoch {epoch}; "
                             "ids must be the dataset's sample ids")
        if steps.size and steps.min() < 0:
            raise ValueError(f"steps must be >= 0 (the global step within the epoch), got {int(steps.min())}")
        # Scatter into id space, then read back in plan (id) order: the result, and every sum taken
        # over it later, is independent of the arrival order of the observations.
        mark = np.zeros(num_samples, dtype=bool)
        mark[ids] = True
        if ids.shape[0] != k or not mark[plan_ids].all():  # k ids covering all k: each exactly once
            self._explain_mismatch(plan_ids, ids, num_samples, epoch)
        score_by_id = np.empty(num_samples, np.float32)
        step_by_id = np.empty(num_samples, np.int64)
        score_by_id[ids] = scores
        step_by_id[ids] = steps
        out_steps, out_scores = step_by_id[plan_ids], score_by_id[plan_ids]
        return out_steps, out_scores

    @staticmethod
    def _explain_mismatch(plan_ids, ids, num_samples, epoch):
        in_plan = np.zeros(num_samples, dtype=bool)
        in_plan[plan_ids] = True
        outside = ~in_plan[ids]
        if outside.any():
            bad = int(ids[outside][0])
            raise ValueError(f"id {bad} was observed in epoch {epoch} but is not in that epoch's plan; "
                             "observe only samples served from the current plan")
        counts = np.bincount(ids, minlength=num_samples)
        if (counts > 1).any():
            j = int(np.argmax(counts > 1))
            raise ValueError(f"id {j} was observed {int(counts[j])} times in epoch {epoch}; "
                             "each sample of the plan must be observed exactly once "
                             "(did two ranks or a retried step report it?)")
        missing = plan_ids[counts[plan_ids] == 0]
        raise ValueError(f"{missing.size} of the {plan_ids.size} samples in the plan of epoch {epoch} were "
                         f"never observed (first ids: {missing[:5].tolist()}); observe every trained sample "
                         "before finish_epoch")
