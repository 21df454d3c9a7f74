"""ObservationBuffer: one epoch's (step, id, score) observations of an id range, appended in arrival
order into preallocated arrays; checks that need the whole epoch run once, at its end. Runs anywhere."""

from __future__ import annotations

import numpy as np

_I64, _F32 = np.dtype(np.int64), np.dtype(np.float32)
_KINDS: tuple[tuple[str, np.dtype], ...] = (("steps", _I64), ("ids", _I64), ("scores", _F32))


def explain_bad_arrays(steps, ids, scores) -> None:
    """Raise the error that says what is wrong with the arguments of observe."""
    for (name, dtype), a in zip(_KINDS, (steps, ids, scores)):
        if a is None:
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array of {dtype.name}, got {type(a).__name__}; "
                            f"convert with np.asarray({name}, dtype=np.{dtype.name})")
        if a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype.name}, got {name}.dtype={a.dtype}; "
                            f"convert with {name}.astype(np.{dtype.name})")
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got {name}.shape={a.shape}; pass one value per sample")
    lengths = [a.shape[0] for a in (steps, ids, scores) if a is not None]
    raise ValueError(f"steps, ids and scores must have the same length, got {', '.join(map(str, lengths))}")


class ObservationBuffer:
    """ids (int64) and scores (float32) in arrival order, and for each run of consecutive
    observations with one step number, that step and where the run ends. Observations sent a batch
    at a time (one step per call) cost one run each: 12 bytes per sample plus about 70 per batch."""

    def __init__(self, capacity: int = 0):
        self.ids = np.empty(capacity, np.int64)
        self.scores = np.empty(capacity, np.float32)
        self.run_steps: list[int] = []
        self.run_ends: list[int] = []
        self.size = 0

    def reset(self, capacity: int) -> None:
        """Empty the buffer, sized for `capacity` observations (re-allocated when it must grow, or
        when it is more than twice too large, so it follows the plan's size)."""
        if capacity > self.ids.shape[0] or capacity < self.ids.shape[0] // 2:
            self.ids = np.empty(capacity, np.int64)
            self.scores = np.empty(capacity, np.float32)
        self.size = 0
        self.run_steps, self.run_ends = [], []

    @property
    def runs(self) -> int:
        return len(self.run_ends)

    def nbytes(self) -> int:
        return self.ids.nbytes + self.scores.nbytes + 36 * 2 * len(self.run_ends)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.ids.shape[0], 1024)
        for name in ("ids", "scores"):
            old = getattr(self, name)
            new = np.empty(cap, old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def add_batch(self, step: int | np.integer, ids: np.ndarray, scores: np.ndarray) -> None:
        """One step's observations: the hot path (type checks only, no pass over the data)."""
        try:
            ok = ids.dtype is _I64 and scores.dtype is _F32 and ids.ndim == 1 and ids.shape == scores.shape
        except AttributeError:
            ok = False
        if not ok:
            explain_bad_arrays(None, ids, scores)
        start = self.size
        end = start + ids.shape[0]
        if end == start:
            return
        if end > self.ids.shape[0]:
            self._grow(end)
        self.ids[start:end] = ids
        self.scores[start:end] = scores
        self.run_steps.append(int(step))
        self.run_ends.append(end)
        self.size = end

    def add(self, steps: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        """Observations with a step number each, in any order and chunking."""
        if not (isinstance(steps, np.ndarray) and isinstance(ids, np.ndarray) and isinstance(scores, np.ndarray)
                and steps.dtype == _I64 and ids.dtype == _I64 and scores.dtype == _F32
                and steps.ndim == ids.ndim == scores.ndim == 1 and steps.shape == ids.shape == scores.shape):
            explain_bad_arrays(steps, ids, scores)
        if ids.shape[0] == 0:
            return
        starts = np.flatnonzero(steps[1:] != steps[:-1]) + 1
        self._append(steps[np.concatenate([[0], starts])], np.diff(np.concatenate([[0], starts, [ids.shape[0]]])),
                     ids, scores)

    def add_runs(self, run_steps: np.ndarray, run_sizes: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        """Several batches at once: run_steps[j] is the step of the next run_sizes[j] observations."""
        if not (isinstance(ids, np.ndarray) and isinstance(scores, np.ndarray) and ids.dtype == _I64
                and scores.dtype == _F32 and ids.ndim == scores.ndim == 1 and ids.shape == scores.shape):
            explain_bad_arrays(None, ids, scores)
        run_steps, run_sizes = np.asarray(run_steps, np.int64), np.asarray(run_sizes, np.int64)
        if run_steps.shape != run_sizes.shape or int(run_sizes.sum()) != ids.shape[0] or (run_sizes < 0).any():
            raise ValueError(f"run sizes must be >= 0 and add up to the {ids.shape[0]} ids given, got "
                             f"{run_sizes.tolist()[:8]}")
        keep = run_sizes > 0
        self._append(run_steps[keep], run_sizes[keep], ids, scores)

    def _append(self, run_steps: np.ndarray, run_sizes: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        start = self.size
        end = start + ids.shape[0]
        if end == start:
            return
        if end > self.ids.shape[0]:
            self._grow(end)
        self.ids[start:end] = ids
        self.scores[start:end] = scores
        self.run_steps.extend(run_steps.tolist())
        self.run_ends.extend((start + np.cumsum(run_sizes)).tolist())
        self.size = end

    # -- reading ------------------------------------------------------------------------------------
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of (ids, scores) observed so far, in arrival order."""
        return self.ids[: self.size], self.scores[: self.size]

    def run_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step, start, length) of every run, as int64 arrays; runs are never empty."""
        steps = np.array(self.run_steps, np.int64)
        ends = np.array(self.run_ends, np.int64)
        starts = np.empty_like(ends)
        if ends.size:
            starts[0] = 0
            starts[1:] = ends[:-1]
        return steps, starts, ends - starts

    def steps(self) -> np.ndarray:
        """int64 step of every observation."""
        steps, _, lengths = self.run_arrays()
        return np.repeat(steps, lengths)
