"""LocalPolicy: a policy with its shards in this process, the API of a plain loop (observe,
finish_epoch, plan, state_dict). The Policy it drives is the conductor that the Ray coordinator
drives over shard actors; both run the same protocol, so plans are the same bit for bit. Runs anywhere."""

from __future__ import annotations

import numpy as np

from repb_ray.core.plan import EpochPlan, combine_digest
from repb_ray.core.policy import Policy
from repb_ray.core.protocol import call_shards, check_bounds, drive, split_range


class LocalPolicy:
    """`policy` (a Policy, fresh) with its shards in this process, over `bounds` (default: its
    `num_shards` near-equal id ranges); the first epoch's plan is decided here."""

    def __init__(self, policy: Policy, *, bounds=None):
        if policy.epoch != 0:
            raise ValueError(f"LocalPolicy needs a fresh policy, got one at epoch {policy.epoch}; load a saved "
                             "state with load_state_dict instead")
        self.policy = policy
        n = policy.num_samples
        self.bounds = check_bounds(split_range(n, policy.num_shards) if bounds is None else bounds, n)
        if len(self.bounds) != policy.num_shards:
            raise ValueError(f"{len(self.bounds)} shard bounds for a policy of shards={policy.num_shards}")
        self.shards = [policy.SHARD(lo, hi, policy.spec) for lo, hi in self.bounds]
        self._plan: EpochPlan | None = None
        self._run(policy.conduct_first())

    # -- the policy's global state, read here -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def params(self) -> dict:
        return self.policy.params

    @property
    def num_samples(self) -> int:
        return self.policy.num_samples

    @property
    def seed(self) -> int:
        return self.policy.seed

    @property
    def world_size(self) -> int:
        return self.policy.world_size

    @property
    def epoch(self) -> int:
        return self.policy.epoch

    @property
    def plan_sizes(self) -> list[int]:
        return self.policy.plan_sizes

    @property
    def history(self) -> list[dict]:
        return self.policy.history

    def pruned_fraction(self) -> float:
        return self.policy.pruned_fraction()

    def budget_status(self, epochs: int | None = None) -> dict | None:
        return self.policy.budget_status(epochs)

    # -- the epoch loop -----------------------------------------------------------------------------
    def _run(self, gen):
        self._plan = None
        return drive(gen, lambda request: call_shards(self.shards, request))

    @property
    def plan(self) -> EpochPlan:
        if self._plan is None:
            parts = [s.plan_arrays() for s in self.shards]
            ids = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            w = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            self._plan = EpochPlan(self.epoch, ids.astype(np.int64, copy=False), w)
        return self._plan

    def observe(self, step, ids: np.ndarray, scores: np.ndarray) -> None:
        """Record scores of trained samples: `step` the global step within the epoch (an int for a
        whole batch, the fast path; or an int64 array, one per sample), ids int64 and scores float32,
        1-D of one length. Any chunking and any order."""
        if len(self.shards) == 1:
            self.shards[0].observe(step, ids, scores)
            return
        for j, sel in self._route(ids):
            self.shards[j].observe(step if np.ndim(step) == 0 else step[sel], ids[sel], scores[sel])

    def _route(self, ids: np.ndarray):
        ids = np.asarray(ids)
        owner = np.searchsorted(np.array([b for _, b in self.bounds[:-1]], np.int64), ids, side="right")
        for j in np.unique(owner):
            yield int(j), owner == j

    def finish_epoch(self, world_size: int | None = None) -> EpochPlan:
        """Decide D_{E+1} and its weights from this epoch's observations; returns the new plan.
        With world_size, |D_{E+1}| is made divisible by it by moving at most world_size-1 randomly
        chosen samples out (they count as not trained and can be resampled later)."""
        ws = self.world_size if world_size is None else self.policy._check_world_size(world_size)
        self._run(self.policy.conduct_next(ws))
        return self.plan

    def retrim(self, world_size: int) -> EpochPlan:
        """Make the current plan's size divisible by a new world size (resuming on another number of
        workers): the samples moved out are drawn from core.rng.retrim(seed, epoch)."""
        self._run(self.policy.conduct_retrim(world_size))
        return self.plan

    # -- accounting ---------------------------------------------------------------------------------
    @property
    def counts(self) -> np.ndarray:
        return self.shards[0].counts if len(self.shards) == 1 else np.concatenate([s.counts for s in self.shards])

    def shard_array(self, name: str) -> np.ndarray:
        """A per-sample array the shards keep (one of their STATE names), over the whole id range."""
        return np.concatenate([getattr(s, name) for s in self.shards])

    def digest(self) -> str:
        return combine_digest(s.digest_parts() for s in self.shards)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Global state plus every per-sample array over the whole id range (the same for any number
        of shards, so a state saved with K shards loads into any other K)."""
        parts = [s.state_arrays() for s in self.shards]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {**self.policy.global_state(), **self.shards[0].state_scalars(), **arrays}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the policy that produced `state` was."""
        self.policy.load_global_state(state)
        self._plan = None
        for s in self.shards:
            s.load_arrays(state, self.epoch)
