"""Coordinator: the Ray actor (one per run, num_cpus=0) holding the core policy for all ranks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import numpy as np
import ray

from repb_ray.core import make_policy


class CoordinatorRestarted(RuntimeError):
    """The coordinator lost its state (its process was restarted); the run resumes from a checkpoint."""


class Coordinator:
    """Receives (step, id, score) from every rank in large chunks, runs finish_epoch once every rank
    has reported the epoch, and publishes the next plan. Create with `Coordinator.create(...)`."""

    def __init__(self, policy: str, num_samples: int, seed: int, world_size: int, params: dict):
        self._args = (policy, num_samples, seed, world_size, params)
        self.generation = uuid.uuid4().hex[:12]
        self._changed = asyncio.Condition()
        self._build(None)

    @classmethod
    def create(cls, policy, num_samples, seed, world_size, params, name: str | None = None):
        actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)(cls)
        opts = {"name": name, "namespace": "repb_ray"} if name else {}
        return actor_cls.options(**opts).remote(policy, num_samples, seed, world_size, params)

    def _build(self, state: dict | None) -> None:
        policy, n, seed, ws, params = self._args
        self.world_size = ws
        self.policy = make_policy(policy, num_samples=n, seed=seed, world_size=ws, **params)
        if state is not None:
            self.policy.load_state_dict(state)
        self._done: set[int] = set()
        self._publish()

    def _publish(self) -> None:
        plan = self.policy.plan
        self._dense_ref = ray.put(plan.dense_weights(self.policy.num_samples))
        self._summary = {
            "epoch": plan.epoch, "kept": len(plan), "digest": plan.digest,
            "weight_mean": float(plan.weights.mean(dtype=np.float64)) if len(plan) else 0.0,
            "weight_max": float(plan.weights.max()) if len(plan) else 0.0,
            "sizes": list(self.policy.sizes), "num_samples": self.policy.num_samples,
            "generation": self.generation,
        }

    def _check(self, generation: str, epoch: int | None = None) -> None:
        if generation != self.generation:
            raise CoordinatorRestarted(f"coordinator generation {self.generation} != {generation}: it was "
                                       "restarted and lost its state; the run must resume from its checkpoint")
        if epoch is not None and epoch != self.policy.epoch:
            raise ValueError(f"observations for epoch {epoch} but the coordinator is at epoch {self.policy.epoch}")

    # -- called by workers --------------------------------------------------------------------------
    async def reset(self, state: dict | None) -> dict:
        """Start over from `state` (a checkpointed policy state) or from scratch; rank 0 calls this
        at every (re)start of the worker group, since the actor may have counted a failed epoch."""
        self._build(state)
        async with self._changed:
            self._changed.notify_all()
        return self._summary

    async def summary(self) -> dict:
        return self._summary

    async def observe(self, generation: str, epoch: int, rank: int, steps, ids, scores, final: bool) -> None:
        self._check(generation, epoch)
        self.policy.observe(steps, ids, scores)
        if final:
            self._done.add(rank)
            if len(self._done) == self.world_size:
                self.policy.finish_epoch(world_size=self.world_size)
                self._done = set()
                self._publish()
                async with self._changed:
                    self._changed.notify_all()

    async def wait_plan(self, generation: str, epoch: int, timeout_s: float) -> dict:
        """Block until the plan of `epoch` is published; on timeout name the ranks that did not report."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while self.policy.epoch < epoch:
                self._check(generation)
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(self.world_size)) - self._done)
                    raise TimeoutError(f"epoch {epoch - 1} not finished after {timeout_s:g}s: ranks {missing} "
                                       "have not reported their last observations")
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except asyncio.TimeoutError:
                    pass
        self._check(generation)
        if self.policy.epoch != epoch:
            raise ValueError(f"asked for the plan of epoch {epoch}, the coordinator is at {self.policy.epoch}")
        return self._summary

    async def current(self) -> list:
        """[generation, epoch, ObjectRef of the dense float32 weights (NaN = not in the plan)]."""
        return [self.generation, self.policy.epoch, self._dense_ref]

    async def plan_arrays(self) -> tuple[int, np.ndarray, np.ndarray]:
        plan = self.policy.plan
        return plan.epoch, plan.ids, plan.weights

    async def state_dict(self) -> dict:
        return self.policy.state_dict()

    async def die(self) -> None:
        """Test hook: end this process abruptly, as a crash or an OOM kill would."""
        os._exit(1)
