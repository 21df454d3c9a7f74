"""Policy base class (per-sample state, epoch planning, state_dict) and make_policy; runs anywhere."""

from __future__ import annotations

import numpy as np

from repb_ray.core.checks import check_int, suggest
from repb_ray.core.observations import ObservationBuffer
from repb_ray.core.plan import EpochPlan

STATE_FORMAT = 1


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for every random draw that decides the plan of `epoch` (1-based)."""
    return np.random.default_rng([seed, epoch])


def trim_to_multiple(ids: np.ndarray, weights: np.ndarray, world_size: int, rng: np.random.Generator):
    """Move len(ids) % world_size randomly chosen samples out, so every rank gets as many samples."""
    extra = ids.shape[0] % world_size
    if extra == 0:
        return ids, weights
    keep = np.ones(ids.shape[0], dtype=bool)
    keep[rng.choice(ids.shape[0], size=extra, replace=False)] = False
    return ids[keep], weights[keep]


class Policy:
    """Holds N_i (times each sample was in a plan), the current EpochPlan and the epoch's observations.

    Subclasses define PARAMS (name -> default, `...` when required), `_check_params`,
    `_first_plan(rng)` and `_next_plan(steps, scores, rng)`; both return (sorted ids int64, weights).
    """

    name = "base"
    PARAMS: dict = {}

    def __init__(self, num_samples: int, seed: int = 0, world_size: int = 1, **params):
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.world_size = self._check_world_size(world_size)
        self.params = self._check_params(self._fill_params(params))
        self.counts = np.zeros(self.num_samples, dtype=np.int32)
        self.sizes: list[int] = []
        self._buffer = ObservationBuffer()
        rng = epoch_rng(self.seed, 1)
        ids, weights = self._first_plan(rng)
        self._commit(1, *trim_to_multiple(ids, weights, self.world_size, rng))

    # -- parameters -------------------------------------------------------------------------------
    def _fill_params(self, params: dict) -> dict:
        for key in params:
            if key not in self.PARAMS:
                known = ", ".join(sorted(self.PARAMS)) or "none"
                raise TypeError(f"unknown parameter {key!r} for policy {self.name!r}{suggest(key, self.PARAMS)}; "
                                f"its parameters are: {known}")
        missing = [k for k, v in self.PARAMS.items() if v is ... and k not in params]
        if missing:
            raise TypeError(f"policy {self.name!r} needs {', '.join(f'{k}=' for k in missing)}")
        return {**self.PARAMS, **params}

    def _check_params(self, params: dict) -> dict:
        return params

    def _check_world_size(self, world_size) -> int:
        ws = check_int("world_size", world_size, minimum=1)
        if ws > self.num_samples:
            raise ValueError(f"world_size={ws} is larger than num_samples={self.num_samples}; "
                             "use fewer workers or more data")
        return ws

    # -- the epoch loop ---------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._plan.epoch

    @property
    def plan(self) -> EpochPlan:
        return self._plan

    def observe(self, steps: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        """Record scores of trained samples: steps int64 (global step within the epoch), ids int64,
        scores float32, all 1-D of one length. Any chunking and any order."""
        self._buffer.add(steps, ids, scores)

    def finish_epoch(self, world_size: int | None = None) -> EpochPlan:
        """Decide D_{E+1} and its weights from this epoch's observations; returns the new plan.
        With world_size, |D_{E+1}| is made divisible by it by moving at most world_size-1 randomly
        chosen samples out (they count as not trained and can be resampled later)."""
        ws = self.world_size if world_size is None else self._check_world_size(world_size)
        steps, scores = self._buffer.align(self._plan.ids, self.num_samples, self.epoch)
        rng = epoch_rng(self.seed, self.epoch + 1)
        ids, weights = self._next_plan(steps, scores, rng)
        ids, weights = trim_to_multiple(ids, weights, ws, rng)
        self._commit(self.epoch + 1, ids, weights)
        return self._plan

    def _commit(self, epoch: int, ids: np.ndarray, weights: np.ndarray) -> None:
        if ids.shape[0] == 0:
            raise ValueError(f"the plan for epoch {epoch} is empty (num_samples={self.num_samples}, "
                             f"params={self.params}); lower the pruning rate or use fewer workers")
        assert ids.dtype == np.int64 and (ids.shape[0] < 2 or (np.diff(ids) > 0).all())
        self._plan = EpochPlan(epoch, ids, weights.astype(np.float32, copy=False))
        self.counts[ids] += 1
        self.sizes.append(int(ids.shape[0]))
        self._buffer.clear()
        self._buffer.reserve(ids.shape[0])

    # -- accounting -------------------------------------------------------------------------------
    def pruned_fraction(self) -> float:
        """1 - sum_E |D_E| / (E n) over the epochs planned so far, the current one included."""
        return 1.0 - sum(self.sizes) / (len(self.sizes) * self.num_samples)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        steps, ids, scores = self._buffer.arrays()
        return {
            "format": STATE_FORMAT, "policy": self.name, "params": dict(self.params),
            "num_samples": self.num_samples, "seed": self.seed, "world_size": self.world_size,
            "epoch": self.epoch, "counts": self.counts.copy(), "sizes": list(self.sizes),
            "plan_ids": self._plan.ids.copy(), "plan_weights": self._plan.weights.copy(),
            "pending_steps": steps.copy(), "pending_ids": ids.copy(), "pending_scores": scores.copy(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the policy that produced `state` was."""
        for key in ("policy", "params", "num_samples", "seed"):
            mine = self.name if key == "policy" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"state has {key}={state.get(key)!r} but this policy has {key}={mine!r}; "
                                 "build the policy with the same arguments as the one that saved the state")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {state.get('format')!r} is not supported (expected {STATE_FORMAT})")
        self.world_size = int(state["world_size"])
        self.counts = np.array(state["counts"], dtype=np.int32, copy=True)
        self.sizes = [int(s) for s in state["sizes"]]
        self._plan = EpochPlan(int(state["epoch"]), np.array(state["plan_ids"], dtype=np.int64, copy=True),
                               np.array(state["plan_weights"], dtype=np.float32, copy=True))
        self._buffer.clear()
        if len(state["pending_ids"]):
            self._buffer.add(*(np.array(state[f"pending_{k}"], copy=True) for k in ("steps", "ids", "scores")))
        self._load_extra_state(state)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    # -- subclass hooks ---------------------------------------------------------------------------
    def _first_plan(self, rng: np.random.Generator):
        return np.arange(self.num_samples, dtype=np.int64), np.ones(self.num_samples, np.float32)

    def _next_plan(self, steps: np.ndarray, scores: np.ndarray, rng: np.random.Generator):
        raise NotImplementedError


def _registry() -> dict:
    from repb_ray.core.baselines import FullPolicy, RandomPolicy
    from repb_ray.core.infobatch import InfoBatchPolicy
    from repb_ray.core.repb import RePBPolicy
    return {cls.name: cls for cls in (RePBPolicy, InfoBatchPolicy, RandomPolicy, FullPolicy)}


POLICY_NAMES = ("repb", "infobatch", "random", "full")


def make_policy(name: str, *, num_samples: int, seed: int = 0, world_size: int = 1, **params) -> Policy:
    """Build a policy by name: 'repb', 'infobatch', 'random' or 'full'."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown policy {name!r}{suggest(str(name), registry)}; "
                         f"choose one of: {', '.join(POLICY_NAMES)}")
    return registry[name](num_samples=num_samples, seed=seed, world_size=world_size, **params)
