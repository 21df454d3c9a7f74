"""The coordinator of one run: a front actor (the end-of-epoch protocol, plan publication, waits) and,
with coordinator_shards=K > 1, K shard actors holding the policy's per-sample state by id range.
Created by the driver; runs in Ray actors (num_cpus=0)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import numpy as np
import ray

from repb_ray.core.plan import combine_digest
from repb_ray.core.policy import Spec, policy_class, split_range
from repb_ray.data.plan_index import PlanIndex
from repb_ray.train import state_store

WAIT_GROUP = "waits"     # wait_plan and read-only getters: their own event loop, never starved
BIG_ARG = 1 << 20        # arguments larger than this go to the object store once per broadcast


def plan_chunk_size(num_samples: int, min_chunk: int = 1 << 16, max_chunk: int = 1 << 19,
                    max_chunks: int = 256) -> int:
    """Ids per published PlanChunk: 65536, doubled while the plan has more than `max_chunks` chunks
    (each is one object-store put, about a millisecond here), up to 2**19 ids (a read task fetches
    the chunks covering its file: 1 bit per id plus 4 bytes per kept id, at most 2 MiB a chunk)."""
    chunk = min_chunk
    while -(-num_samples // chunk) > max_chunks and chunk < max_chunk:
        chunk *= 2
    return chunk


class CoordinatorRestarted(RuntimeError):
    """The coordinator lost its state (its process was restarted); the run resumes from a checkpoint."""


class StaleCall(RuntimeError):
    """A call for another generation or epoch than the coordinator is at."""


class ShardHost:
    """One shard of the policy and the bookkeeping of an epoch's deliveries: which chunks each rank
    sent (sequence numbers) and how many it said it sent. Ready when every rank is complete."""

    def __init__(self, shard, world_size: int):
        self.shard = shard
        self.world_size = world_size
        self.generation = None
        self.epoch = None
        self.got: dict[int, set] = {}
        self.expect: dict[int, int] = {}

    def begin(self, generation: str, epoch: int, world_size: int) -> None:
        self.generation, self.epoch, self.world_size = generation, epoch, world_size
        self.got, self.expect = {}, {}

    def _check(self, generation: str, epoch: int) -> None:
        if generation != self.generation:
            raise CoordinatorRestarted(f"coordinator generation {self.generation} != {generation}: it was restarted "
                                       "and lost its state; the run must resume from its checkpoint")
        if epoch != self.epoch:
            raise StaleCall(f"observations for epoch {epoch} but the coordinator is at epoch {self.epoch}")

    def observe(self, generation, epoch, rank, seq, run_steps, run_sizes, ids, scores) -> bool:
        self._check(generation, epoch)
        seqs = self.got.setdefault(rank, set())
        if seq in seqs:  # delivered twice: keep the first
            return self.ready()
        seqs.add(seq)
        self.shard.observe_runs(run_steps, run_sizes, ids, scores)
        return self.ready()

    def finish(self, generation, epoch, rank, chunks) -> bool:
        self._check(generation, epoch)
        self.expect[rank] = int(chunks)
        return self.ready()

    def ready(self) -> bool:
        return len(self.expect) == self.world_size and all(
            len(self.got.get(r, ())) == n for r, n in self.expect.items())

    def missing(self) -> list[int]:
        return sorted(r for r in range(self.world_size)
                      if r not in self.expect or len(self.got.get(r, ())) != self.expect[r])

    def publish(self, chunk: int) -> tuple[list, tuple]:
        """The shard's plan chunks put in the object store, and its summary parts."""
        chunks, parts = self.shard.publish(chunk)
        return [(c.lo, c.hi, c.kept, ray.put(c)) for c in chunks], parts

    def save(self, location: str, index: int) -> str:
        arrays = self.shard.state_arrays()
        path = state_store.join(location, f"shard_{index:03d}.npz")
        state_store.save_npz(path, arrays, {"lo": self.shard.lo, "hi": self.shard.hi, **self.shard.state_scalars()})
        return path

    def load(self, location: str, index: int, epoch: int) -> None:
        arrays, meta = state_store.load_npz(state_store.join(location, f"shard_{index:03d}.npz"))
        if (meta["lo"], meta["hi"]) != (self.shard.lo, self.shard.hi):
            raise ValueError(f"coordinator state shard {index} covers ids [{meta['lo']}, {meta['hi']}), this run's "
                             f"shard covers [{self.shard.lo}, {self.shard.hi}); resume with the same coordinator_shards")
        self.shard.load_arrays({**arrays, **{k: v for k, v in meta.items() if k not in ("lo", "hi")}}, epoch)

    def nbytes(self) -> dict:
        return self.shard.nbytes()


class ShardActor:
    """A ShardHost in its own actor; tells the front when its part of the epoch is complete."""

    def __init__(self, index: int, lo: int, hi: int, policy: str, num_samples: int, seed: int, params: dict,
                 world_size: int, front):
        self._args = (lo, hi, policy, Spec(policy, num_samples, seed, dict(params)), world_size)
        self.index, self.front = index, front
        self.reinit()

    def reinit(self):
        """A fresh shard (a reset without a saved state must not keep counts of a failed attempt)."""
        lo, hi, policy, spec, world_size = self._args
        self.host = ShardHost(policy_class(policy).SHARD(lo, hi, spec), world_size)

    def begin(self, generation, epoch, world_size):
        self.host.begin(generation, epoch, world_size)

    def observe(self, generation, epoch, rank, seq, run_steps, run_sizes, ids, scores):
        if self.host.observe(generation, epoch, rank, seq, run_steps, run_sizes, ids, scores):
            self.front.shard_ready.remote(generation, epoch, self.index)

    def finish(self, generation, epoch, rank, chunks):
        if self.host.finish(generation, epoch, rank, chunks):
            self.front.shard_ready.remote(generation, epoch, self.index)

    def missing(self):
        return self.host.missing()

    def call(self, method, *args):
        return getattr(self.host.shard, method)(*args)

    def publish(self, chunk):
        return self.host.publish(chunk)

    def save(self, location):
        return self.host.save(location, self.index)

    def load(self, location, epoch):
        self.host.load(location, self.index, epoch)

    def nbytes(self):
        return self.host.nbytes()

    def trace_memory(self, on: bool):
        return _trace_memory(on)


def _trace_memory(on: bool) -> int:
    """Benchmarks: start tracing this process's allocations, or stop and return the peak (bytes)."""
    import tracemalloc
    if on:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return int(peak)


class Coordinator:
    """The front. Workers observe into it (K=1) or into the shard actors it created (K>1), finish each
    epoch with the number of chunks they sent, and wait for the next plan; rank 0 resets it at every
    (re)start of the worker group and asks it to save its state next to each checkpoint."""

    def __init__(self, policy: str, num_samples: int, seed: int, world_size: int, params: dict,
                 shards: int = 1, chunk: int | None = None):
        self._args = dict(policy=policy, num_samples=num_samples, seed=seed, params=dict(params))
        self.world_size, self.num_shards = world_size, shards
        self.chunk = chunk or plan_chunk_size(num_samples)
        self.bounds = split_range(num_samples, shards)
        self._lock = threading.Lock()
        self._waiters: list = []
        self._progress: dict = {}
        self._epochs: list = []
        self._remote = None
        self._started = False
        self._timing: dict = {}     # the last end of epoch: seconds per protocol step, decision, publication

    # -- building --------------------------------------------------------------------------------------
    def _new_policy(self, local: bool):
        cls = policy_class(self._args["policy"])
        return cls(num_samples=self._args["num_samples"], seed=self._args["seed"], world_size=self.world_size,
                   bounds=self.bounds, local=local, **self._args["params"])

    async def _build(self, location: str | None, epoch_state: dict | None, world_size: int) -> None:
        self._timing = {}
        with self._lock:
            self.generation = uuid.uuid4().hex[:12]
            self._published = None
            self._error = None
            self._ready = set()
        if self.num_shards == 1:
            self.policy = self._new_policy(local=True)
            self.host = ShardHost(self.policy.shards[0], self.world_size)
            if location is not None:
                self.policy.load_global_state(epoch_state)
                self.host.load(location, 0, self.policy.epoch)
            self._remote = None
        else:
            self.policy = self._new_policy(local=False)
            if self._remote is None:  # the shard actors live as long as this process
                actor = ray.remote(num_cpus=0, max_restarts=0)(ShardActor)
                me = ray.get_runtime_context().current_actor
                self._remote = [actor.remote(j, lo, hi, self._args["policy"], self._args["num_samples"],
                                             self._args["seed"], self.policy.params, self.world_size, me)
                                for j, (lo, hi) in enumerate(self.bounds)]
            if location is not None:
                self.policy.load_global_state(epoch_state)
                await asyncio.gather(*[h.load.remote(location, self.policy.epoch) for h in self._remote])
            else:
                await asyncio.gather(*[h.reinit.remote() for h in self._remote])
                await self._drive(self.policy.conduct_first())
        if world_size != self.policy.world_size or (self.policy.sizes and self.policy.sizes[-1] % world_size):
            self.policy.world_size = world_size
            await self._drive(self.policy.conduct_retrim(world_size))
        self.world_size = world_size
        await self._begin_epoch()

    async def _begin_epoch(self) -> None:
        e = self.policy.epoch
        if self._remote is None:
            self.host.begin(self.generation, e, self.world_size)
        else:
            await asyncio.gather(*[h.begin.remote(self.generation, e, self.world_size) for h in self._remote])
        await self._publish()

    async def _publish(self) -> None:
        t0 = time.perf_counter()
        if self._remote is None:
            published = [self.host.publish(self.chunk)]
        else:
            published = await asyncio.gather(*[h.publish.remote(self.chunk) for h in self._remote])
        entries = [x for shard_entries, _ in published for x in shard_entries]
        parts = [p for _, p in published]
        count = sum(p[0] for p in parts)
        index = PlanIndex(self.generation, self.policy.epoch, self._args["seed"], self._args["num_samples"], count,
                          np.array([e[0] for e in entries], np.int64), np.array([e[1] for e in entries], np.int64),
                          np.array([e[2] for e in entries], np.int64), tuple(e[3] for e in entries))
        p = self.policy
        summary = {
            "generation": self.generation, "epoch": p.epoch, "kept": count, "num_samples": p.num_samples,
            "digest": combine_digest(x[3] for x in parts), "sizes": list(p.sizes),
            "weight_mean": sum(x[1] for x in parts) / max(count, 1), "weight_max": max(x[2] for x in parts),
            "decision": dict(p.history[-1]) if p.history else {}, "world_size": self.world_size,
            "budget": p.budget_status(),
        }
        summary["timing"] = {**self._timing, "publish_s": time.perf_counter() - t0}
        with self._lock:
            self._published = (index, summary)
            self._notify()

    def _notify(self) -> None:
        """Wake the waiters (they run on the wait group's own event loop)."""
        waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    # -- the protocol over local or remote shards -------------------------------------------------
    async def _drive(self, gen):
        """Run a protocol over the shards; the seconds of each step go to self._timing['steps']."""
        result = None
        steps = self._timing.setdefault("steps", {})
        while True:
            try:
                request = gen.send(result)
            except StopIteration as stop:
                return stop.value
            t = time.perf_counter()
            result = await self._call(request)
            steps[request.method] = steps.get(request.method, 0.0) + time.perf_counter() - t

    async def _call(self, request) -> list:
        if self._remote is None:
            return self.policy._call_local(request)
        args = request.per_shard or [request.args] * len(self._remote)
        puts: dict = {}

        def big(a):
            if isinstance(a, np.ndarray) and a.nbytes > BIG_ARG:
                if id(a) not in puts:
                    puts[id(a)] = ray.put(a)
                return puts[id(a)]
            return a
        return list(await asyncio.gather(*[h.call.remote(request.method, *[big(a) for a in a_j])
                                           for h, a_j in zip(self._remote, args)]))

    async def _finish_epoch(self) -> None:
        try:
            t = time.perf_counter()
            self._timing = {}
            await self._drive(self.policy.conduct_next(self.world_size))
            self._timing["decide_s"] = time.perf_counter() - t
            await self._begin_epoch()
        except Exception as exc:  # the workers waiting for the plan re-raise it
            cause = getattr(exc, "cause", None) or exc
            with self._lock:
                self._error = f"{type(cause).__name__}: {cause}"
                self._notify()

    # -- called by rank 0 ---------------------------------------------------------------------------
    async def reset(self, location: str | None, world_size: int) -> dict:
        """Start over from the state saved at `location` (see save) or from scratch, with a new
        generation id; rank 0 calls this at every (re)start of the worker group, since the actor may
        hold a failed epoch's partial observations."""
        epoch_state = None
        if location is not None:
            epoch_state = state_store.load_npz(state_store.join(location, "global.npz"))[1]
            if epoch_state.get("shards", 1) != self.num_shards:
                raise ValueError(f"the checkpoint's coordinator state has {epoch_state.get('shards')} shards, this run "
                                 f"has coordinator_shards={self.num_shards}; resume with the same number of shards")
        await self._build(location, epoch_state, world_size)
        self._started = True
        return self._published[1]

    async def save(self, location: str) -> str:
        """Write the state: one file per shard, written by the shards themselves, and the global part."""
        if self._remote is None:
            self.host.save(location, 0)
        else:
            await asyncio.gather(*[h.save.remote(location) for h in self._remote])
        state = {**self.policy.global_state(), "shards": self.num_shards, "bounds": self.bounds}
        state_store.save_npz(state_store.join(location, "global.npz"), {}, state)
        return location

    # -- called by every rank -----------------------------------------------------------------------
    def routing(self) -> dict:
        """Where a rank sends its observations: this front (K=1) or the shard actors by id range."""
        if not self._started:
            raise RuntimeError("the coordinator has not been reset yet; rank 0 resets it before the epochs start")
        return {"generation": self.generation, "bounds": self.bounds, "shards": self._remote}

    async def observe(self, generation, epoch, rank, seq, run_steps, run_sizes, ids, scores) -> None:
        if self.host.observe(generation, epoch, rank, seq, run_steps, run_sizes, ids, scores):
            await self._finish_epoch()

    async def finish(self, generation, epoch, rank, chunks) -> None:
        if self.host.finish(generation, epoch, rank, chunks):
            await self._finish_epoch()

    async def shard_ready(self, generation, epoch, index) -> None:
        if generation != self.generation or epoch != self.policy.epoch:
            return
        self._ready.add(index)
        if len(self._ready) == self.num_shards:
            self._ready = set()
            await self._finish_epoch()

    @ray.method(concurrency_group=WAIT_GROUP)
    async def wait_plan(self, generation: str, epoch: int, timeout_s: float) -> dict:
        """Block until the plan of `epoch` is published; raise the decision's error if it failed; on
        timeout name the ranks that did not report."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if generation != self.generation:
                    raise CoordinatorRestarted(f"coordinator generation {self.generation} != {generation}: it was "
                                               "restarted; the run resumes from its checkpoint")
                if self._error is not None:
                    raise RuntimeError(self._error)
                published = self._published
                if published is not None and published[1]["epoch"] >= epoch:
                    if published[1]["epoch"] != epoch:
                        raise StaleCall(f"asked for the plan of epoch {epoch}, the coordinator is at "
                                        f"{published[1]['epoch']}")
                    return published[1]
                event = asyncio.Event()
                self._waiters.append((asyncio.get_running_loop(), event))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"epoch {epoch - 1} not finished after {timeout_s:g}s: ranks "
                                   f"{await self._missing()} have not reported their last observations")
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    async def _missing(self) -> list[int]:
        if self._remote is None:
            return self.host.missing()
        lists = await asyncio.gather(*[h.missing.remote() for h in self._remote])
        return sorted(set().union(*lists))

    @ray.method(concurrency_group=WAIT_GROUP)
    def plan_index(self) -> PlanIndex:
        with self._lock:
            if self._published is None:
                raise RuntimeError("no plan is published yet")
            return self._published[0]

    @ray.method(concurrency_group=WAIT_GROUP)
    def plan_epoch(self) -> tuple:
        """(generation, epoch) of the published plan: a cheap check before fetching the index."""
        with self._lock:
            return (self.generation, None if self._published is None else self._published[1]["epoch"])

    async def plan_arrays(self) -> tuple:
        """(ids, weights) of the whole current plan, gathered in one place (tests and audits only)."""
        if self._remote is None:
            return self.host.shard.plan_arrays()
        parts = await asyncio.gather(*[h.call.remote("plan_arrays") for h in self._remote])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @ray.method(concurrency_group=WAIT_GROUP)
    def summary(self) -> dict:
        with self._lock:
            return None if self._published is None else self._published[1]

    @ray.method(concurrency_group=WAIT_GROUP)
    def report_progress(self, progress: dict) -> None:
        """Rank 0: where the epoch is (epoch, samples, kept, start) or an epoch's metrics (`done`)."""
        if "done" in progress:
            done = progress["done"]
            self._epochs = [m for m in self._epochs if m["epoch"] < done["epoch"]] + [done]  # a resumed epoch replaces
        else:
            self._progress = progress

    @ray.method(concurrency_group=WAIT_GROUP)
    def progress(self, since: int = 0) -> dict:
        """The epoch metrics after the first `since`, and where the current epoch is."""
        return {"epochs": [m for m in self._epochs if m["epoch"] > since], "now": self._progress}

    async def selection_counts(self) -> np.ndarray:
        """N_i of every sample (how many epochs' plans held it), in id order."""
        if self._remote is None:
            return self.host.shard.counts.copy()
        parts = await asyncio.gather(*[h.call.remote("current_counts") for h in self._remote])
        return np.concatenate(parts)

    async def memory(self) -> list[dict]:
        if self._remote is None:
            return [self.host.nbytes()]
        return list(await asyncio.gather(*[h.nbytes.remote() for h in self._remote]))

    async def trace_memory(self, on: bool) -> list[int]:
        """Benchmarks: trace allocations in the shards' processes from now (on=True), or stop and
        return each shard's peak traced bytes (on=False)."""
        if self._remote is None:
            return [_trace_memory(on)]
        return list(await asyncio.gather(*[h.trace_memory.remote(on) for h in self._remote]))

    def die(self) -> None:
        """Test hook: end this process abruptly, as a crash or an OOM kill would."""
        os._exit(1)


def create(policy: str, num_samples: int, seed: int, world_size: int, params: dict, *, shards: int = 1,
           chunk: int | None = None, name: str | None = None, namespace: str | None = None):
    """The front actor (num_cpus=0, restarted with a fresh state if its process dies)."""
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,
                       concurrency_groups={WAIT_GROUP: 100_000})(Coordinator)
    opts = {"name": name, "namespace": namespace} if name else {}
    return actor.options(**opts).remote(policy, num_samples, seed, world_size, params, shards=shards, chunk=chunk)
