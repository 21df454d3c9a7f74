"""The coordinator of one run: an actor that conducts the end-of-epoch protocol over the policy's
shards (in its own process, or one actor each with coordinator_shards = K > 1), publishes each plan
(chunks for the data tasks, a PlanSummary for everyone), lets ranks wait for it, and saves and
restores the shards' state next to the checkpoints. Created by the driver; runs in a Ray actor
(num_cpus=0, restarted by Ray if its process dies)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import numpy as np
import ray

from repb_ray import storage
from repb_ray.core.plan import combine_digest
from repb_ray.core.protocol import Call, Spec, drive, split_range
from repb_ray.core.registry import policy_class
from repb_ray.core.shard import Shard
from repb_ray.data.plan_index import PlanIndex, ReadEpoch
from repb_ray.layout import is_state, is_within_epoch
from repb_ray.train.messages import EpochDone, Observations, PlanSummary, Routing
from repb_ray.train.placement import near_here
from repb_ray.train.shards import ActorShards, CoordinatorRestarted, LocalShards, ShardHost, StaleCall, memory_request

WAIT_GROUP = "waits"  # wait_plan and read-only getters: their own event loop, never starved
KEEP_STATES = 3       # coordinator states kept next to the checkpoints (Train keeps 2)
GLOBAL_FILE = "global.npz"


def plan_chunk_size(num_samples: int, min_chunk: int = 1 << 16, max_chunk: int = 1 << 19,
                    max_chunks: int = 256) -> int:
    """Ids per published PlanChunk: 65536, doubled while the plan has more than `max_chunks` chunks
    (each is one object-store put, about a millisecond here), up to 2**19 ids (a read task fetches
    the chunks covering its file: 1 bit per id plus 4 bytes per kept id, at most 2 MiB a chunk)."""
    chunk = min_chunk
    while -(-num_samples // chunk) > max_chunks and chunk < max_chunk:
        chunk *= 2
    return chunk


class Coordinator:
    """Ranks observe into it (its own shards) or into the shard actors, finish each epoch with the
    number of chunks they sent, and wait for the next plan; rank 0 resets it at every (re)start of
    the worker group and asks it to save its state next to each checkpoint, under `state_root` (a
    path or URI only the coordinator knows: checkpoints name states relative to it)."""

    def __init__(self, policy: str, num_samples: int, seed: int, world_size: int, params: dict,
                 shards: int = 1, chunk: int | None = None, state_root: str | None = None, fence=None):
        self.fence = fence  # the run's owner generation: checked before every state written (ownership.Fence)
        self.spec = Spec(policy, num_samples, seed, policy_class(policy).check_params(dict(params)))
        self.world_size, self.num_shards = world_size, shards
        self.chunk = chunk or plan_chunk_size(num_samples)
        self.bounds = split_range(num_samples, shards)
        self.state_root = state_root
        self.group = None
        self.policy = None
        self.generation = None
        self._lock = threading.Lock()
        self._waiters: list = []
        self._published = None
        self._serving: tuple | None = None  # (epoch, timeout_s) rank 0 named for the next execution of the data
        self._read_waits = 0                # reads waiting for a plan now
        self._error = None
        self._ready: set = set()
        self._decided = None      # (generation, epoch) whose decision has started
        self._task = None
        self._failures: dict = {}  # generation -> the first failure a rank recorded in it (epoch, step, error)

    # -- (re)starting -------------------------------------------------------------------------------
    async def reset(self, state: str | None, world_size: int) -> PlanSummary:
        """Start over from the state saved as `state` (see save) or from scratch, with a new
        generation id; rank 0 calls this at every (re)start of the worker group, since the shards
        may hold a failed epoch's partial observations. A state saved within an epoch holds the
        observations of its first steps (the ranks continue after them)."""
        generation = uuid.uuid4().hex[:12]
        with self._lock:
            self.generation, self._published, self._error, self._ready = generation, None, None, set()
            self._serving = None
        location = epoch_state = None
        if self.fence is not None:
            await asyncio.to_thread(self.fence.check)
        if state is not None:
            if self.state_root is None:
                raise ValueError("this coordinator has no state_root: it cannot restore a saved state")
            location = storage.join(self.state_root, state)
            epoch_state = storage.load_npz(storage.join(location, GLOBAL_FILE))[1]
            if epoch_state.get("shards", 1) != self.num_shards:
                raise ValueError(f"the checkpoint's coordinator state has {epoch_state.get('shards')} shards, this run "
                                 f"has coordinator_shards={self.num_shards}; resume with the same number of shards")
        self.policy = policy_class(self.spec.name)(num_samples=self.spec.num_samples, seed=self.spec.seed,
                                                   world_size=self.world_size, shards=self.num_shards,
                                                   **self.spec.params)
        if self.group is None:
            if self.num_shards == 1:
                self.group = LocalShards([ShardHost(0, 0, self.spec.num_samples, self.spec.name, self.spec,
                                                    self.world_size)])
            else:
                self.group = ActorShards(self.bounds, self.spec.name, self.spec, self.world_size,
                                         ray.get_runtime_context().current_actor)
        await asyncio.to_thread(self._restart, generation, location, epoch_state, world_size)
        return self._published[1]

    def _restart(self, generation: str, location: str | None, epoch_state: dict | None, world_size: int) -> None:
        call = self._caller(generation, {})
        if location is not None:
            self.policy.load_global_state(epoch_state)
        self.group.each(ShardHost.reset, [(generation, location, self.policy.epoch)] * len(self.group))
        if location is None:
            drive(self.policy.conduct_first(), call)
        p = self.policy
        if world_size != p.world_size or (p.plan_sizes and p.plan_sizes[-1] % world_size):
            drive(p.conduct_retrim(world_size), call)
        self.world_size = world_size
        self._begin_and_publish(generation, {})

    def _caller(self, generation: str, timing: dict):
        """The protocol's call: one step on every shard of this generation, timed per step."""
        steps = timing.setdefault("steps", {})

        def call(request):
            t = time.perf_counter()
            out = self.group.call(generation, request)
            steps[request.name] = steps.get(request.name, 0.0) + time.perf_counter() - t
            return out
        return call

    def _begin_and_publish(self, generation: str, timing: dict) -> None:
        t0 = time.perf_counter()
        p, k = self.policy, len(self.group)
        self.group.each(ShardHost.begin, [(generation, p.epoch, self.world_size)] * k)
        published = self.group.each(ShardHost.publish, [(generation, self.chunk)] * k)
        entries = [x for shard_entries, _ in published for x in shard_entries]
        parts = [part for _, part in published]
        count = sum(x[0] for x in parts)
        index = PlanIndex(generation, p.epoch, self.spec.seed, self.spec.num_samples,
                          np.array([e[0] for e in entries], np.int64), np.array([e[1] for e in entries], np.int64),
                          tuple(e[2] for e in entries))
        summary = PlanSummary(
            generation=generation, epoch=p.epoch, kept=count, num_samples=p.num_samples,
            digest=combine_digest(x[3] for x in parts), plan_sizes=tuple(p.plan_sizes),
            weight_mean=sum(x[1] for x in parts) / max(count, 1), weight_max=max(x[2] for x in parts),
            decision=dict(p.history[-1]) if p.history else {}, world_size=self.world_size,
            budget=p.budget_status(), timing={**timing, "publish_s": time.perf_counter() - t0,
                                              "reads_waiting": self._read_waits})
        with self._lock:
            if generation == self.generation:
                self._published = (index, summary)
                self._notify()

    def _notify(self) -> None:
        """Wake the waiters (they run on the wait group's own event loop)."""
        waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    # -- the end of an epoch --------------------------------------------------------------------------
    def _start_decision(self, generation: str, epoch: int) -> None:
        if self._decided == (generation, epoch):  # a late duplicate completed it again
            return
        self._decided = (generation, epoch)
        self._task = asyncio.get_running_loop().create_task(self._decide(generation))

    async def _decide(self, generation: str) -> None:
        try:
            await asyncio.to_thread(self._decide_now, generation)
        except Exception as exc:  # the ranks waiting for the plan re-raise it
            cause = getattr(exc, "cause", None) or exc
            with self._lock:
                if generation == self.generation:
                    self._error = f"{type(cause).__name__}: {cause}"
                    self._notify()

    def _decide_now(self, generation: str) -> None:
        t = time.perf_counter()
        timing: dict = {}
        drive(self.policy.conduct_next(self.world_size), self._caller(generation, timing))
        timing["decide_s"] = time.perf_counter() - t
        self._begin_and_publish(generation, timing)

    # -- called by rank 0 -------------------------------------------------------------------------------
    async def save(self, state: str) -> str:
        """Write the state as `state` under the state root: one file per shard, written by the shards
        themselves, and the global part; keep the last KEEP_STATES states. Returns `state`."""
        if self.state_root is None:
            raise ValueError("this coordinator has no state_root to save its state under")
        location = storage.join(self.state_root, state)
        generation = self.generation
        if self.fence is not None:
            await asyncio.to_thread(self.fence.check)
        await asyncio.to_thread(self.group.each, ShardHost.save, [(generation, location)] * len(self.group))
        meta = {**self.policy.global_state(), "shards": self.num_shards, "bounds": self.bounds,
                "owner_generation": None if self.fence is None else self.fence.generation}
        await asyncio.to_thread(storage.save_npz, storage.join(location, GLOBAL_FILE), {}, meta)
        await asyncio.to_thread(self._drop_old_states)
        return state

    def _drop_old_states(self) -> None:
        """Keep the last KEEP_STATES states saved at an epoch's end and the newest one saved within an
        epoch after them, as Ray Train keeps their checkpoints (this run's own folder, under its fence);
        a listing or a removal that fails keeps them (said once in the actor's log), never reads as empty."""
        try:
            if self.fence is not None:
                self.fence.check()
            states = sorted(d for d in storage.list_dirs(self.state_root) if is_state(d))
            ends = [d for d in states if not is_within_epoch(d)]
            keep = set(ends[-KEEP_STATES:]) | {d for d in states[-1:] if not ends or d > ends[-1]}
            for d in states:
                if d not in keep:
                    storage.remove(storage.join(self.state_root, d))
        except OSError as exc:
            print(f"[repb_ray] coordinator: old states kept ({type(exc).__name__}: {exc})", flush=True)

    @ray.method(concurrency_group=WAIT_GROUP)
    def record_failure(self, generation: str, epoch: int, step: int, error: str) -> None:
        """A rank's error at (epoch, step) in the worker group of `generation`; the first one counts."""
        self._failures.setdefault(generation, (epoch, step, error))

    @ray.method(concurrency_group=WAIT_GROUP)
    def repeated_failure(self) -> str | None:
        """The error that ended the last two worker groups at the same epoch and step, said in one line
        (None when the last failure was new): retrying it again would fail the same way."""
        firsts = list(self._failures.values())
        if len(firsts) < 2 or firsts[-1] != firsts[-2]:
            return None
        epoch, step, error = firsts[-1]
        return (f"failed twice at epoch {epoch}, step {step} with the same error ({error}); not retried again: fix "
                "the cause, then continue the run with --resume")

    # -- called by every rank ---------------------------------------------------------------------------
    def routing(self) -> Routing:
        """Where a rank sends its observations: this actor (its own shards) or the shard actors."""
        self._check_started()
        return Routing(self.generation, tuple(self.bounds), self.group.targets(ray.get_runtime_context().current_actor))

    def _check_started(self) -> None:
        if self.group is None:
            raise CoordinatorRestarted("the coordinator has no state (its process was restarted, or rank 0 has not "
                                       "reset it yet); the run resumes from its checkpoint")

    async def observe(self, msg: Observations) -> None:
        """A chunk of observations for a shard in this process."""
        self._check_started()
        if self.group.hosts[msg.shard].observe(msg):
            await self.shard_ready(msg.generation, msg.epoch, msg.shard)

    async def finish(self, msg: EpochDone) -> None:
        """A rank's end of epoch, for a shard in this process."""
        self._check_started()
        if self.group.hosts[msg.shard].finish(msg):
            await self.shard_ready(msg.generation, msg.epoch, msg.shard)

    async def shard_ready(self, generation: str, epoch: int, index: int) -> None:
        """Shard `index` (in this process or an actor) has every rank's observations of `epoch`; the
        decision starts when every shard has: the one readiness path of both shard groups."""
        if generation != self.generation or epoch != self.policy.epoch:
            return
        self._ready.add(index)
        if len(self._ready) == self.num_shards:
            self._ready = set()
            self._start_decision(generation, epoch)

    @ray.method(concurrency_group=WAIT_GROUP)
    async def wait_plan(self, generation: str, epoch: int, timeout_s: float) -> PlanSummary:
        """Block until the plan of `epoch` is published; raise the decision's error if it failed; on
        timeout name the ranks that did not report."""
        return (await self._wait_published(generation, epoch, timeout_s))[1]

    @ray.method(concurrency_group=WAIT_GROUP)
    async def wait_index(self, generation: str, epoch: int, timeout_s: float) -> PlanIndex:
        """A read's wait for the PlanIndex of `epoch` (its bytes in hand, the plan perhaps not decided yet)."""
        self._read_waits += 1
        try:
            return (await self._wait_published(generation, epoch, timeout_s))[0]
        finally:
            self._read_waits -= 1

    async def _wait_published(self, generation: str, epoch: int, timeout_s: float) -> tuple:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._check_generation(generation)
                if self._error is not None:
                    raise RuntimeError(self._error)
                published = self._published
                if published is not None and published[1].epoch >= epoch:
                    if published[1].epoch != epoch:
                        raise StaleCall(f"asked for the plan of epoch {epoch}, the coordinator is at "
                                        f"{published[1].epoch}")
                    return published
                event = asyncio.Event()
                self._waiters.append((asyncio.get_running_loop(), event))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"epoch {epoch - 1} not finished after {timeout_s:g}s: ranks "
                                   f"{await asyncio.to_thread(self._missing)} have not reported their last "
                                   "observations")
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except TimeoutError:
                pass

    def _missing(self) -> list[int]:
        lists = self.group.each(ShardHost.missing, [()] * len(self.group))
        return sorted(set().union(*lists))

    @ray.method(concurrency_group=WAIT_GROUP)
    def serve(self, generation: str, epoch: int, timeout_s: float) -> None:
        """Rank 0, before the ranks iterate the train data: the execution they start serves `epoch` (whose
        plan may not be decided yet; its reads wait for it up to `timeout_s`)."""
        with self._lock:
            self._check_generation(generation)
            self._serving = (epoch, timeout_s)

    def _check_generation(self, generation: str) -> None:
        if generation != self.generation:
            raise CoordinatorRestarted(f"coordinator generation {self.generation} != {generation}: it was restarted; "
                                       "the run resumes from its checkpoint")

    @ray.method(concurrency_group=WAIT_GROUP)
    def read_epoch(self) -> ReadEpoch:
        """The epoch the train data's current execution serves: the one rank 0 named last, or the published
        plan's when that is later (ranks that iterate the data without naming it read the published plan)."""
        with self._lock:
            if self._published is None:
                raise RuntimeError("no plan is published yet")
            epoch, timeout_s = self._serving or (0, 0.0)
            return ReadEpoch(self.generation, max(epoch, self._published[1].epoch), self.spec.seed,
                             self.spec.num_samples, timeout_s)

    @ray.method(concurrency_group=WAIT_GROUP)
    def read_waits(self) -> int:
        """How many reads are waiting for a plan now."""
        return self._read_waits

    @ray.method(concurrency_group=WAIT_GROUP)
    def summary(self) -> PlanSummary | None:
        with self._lock:
            return None if self._published is None else self._published[1]

    # -- reading the state (driver, audits, benchmarks) -------------------------------------------------
    async def selection_counts(self) -> np.ndarray:
        """N_i of every sample (how many epochs' plans held it), in id order."""
        parts = await asyncio.to_thread(self.group.call, self.generation, Call(Shard.current_counts))
        return np.concatenate(parts)

    async def plan_arrays(self) -> tuple:
        """(ids, weights) of the whole current plan, gathered in one place (tests and audits only)."""
        parts = await asyncio.to_thread(self.group.call, self.generation, Call(Shard.plan_arrays))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    async def memory(self) -> list[dict]:
        """Resident bytes of each shard's state and observation buffer."""
        return await asyncio.to_thread(self.group.each, ShardHost.nbytes, [()] * len(self.group))

    def shard_handles(self) -> tuple:
        """The shard actors (empty when the shards live in this process): for benchmarks that measure them."""
        return tuple(self.group.handles) if isinstance(self.group, ActorShards) else ()


def create(policy: str, num_samples: int, seed: int, world_size: int, params: dict, *, shards: int = 1,
           chunk: int | None = None, state_root=None, fence=None):
    """The coordinator actor: num_cpus=0, memory for the state it holds itself, restarted with a fresh
    state if its process dies (the next reset restores it from the last saved state). `state_root` is
    a path or URI, or an object-store reference to one (then the actor's creation record, which Ray
    keeps, holds the reference and not a location that may carry a credential). `fence` (an
    ownership.Fence) is checked before every state it writes: a driver that lost its run stops here."""
    actor = ray.remote(concurrency_groups={WAIT_GROUP: 100_000})(Coordinator).options(
        num_cpus=0, max_restarts=-1, max_task_retries=0, memory=memory_request(num_samples if shards == 1 else 0),
        scheduling_strategy=near_here())  # its own memory, on the driver's node when it has room
    return actor.remote(policy, num_samples, seed, world_size, params, shards=shards, chunk=chunk,
                        state_root=state_root, fence=fence)
