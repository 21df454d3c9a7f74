"""The shards of a run's coordinator: ShardHost (one id range's policy state plus the bookkeeping of
an epoch's deliveries) and the two shard groups the coordinator drives through one interface:
LocalShards (hosts in the coordinator's own process) and ActorShards (one ShardActor each, restarted
by Ray if its process dies, then reloaded by the next reset). Every call carries the coordinator's
generation, so a step of an abandoned decision can never touch a reset shard. Runs in the
coordinator's and the shard actors' processes."""

from __future__ import annotations

import numpy as np
import ray

from repb_ray import storage
from repb_ray.core.protocol import Call, Spec, run_step
from repb_ray.core.registry import policy_class
from repb_ray.train.messages import EpochDone, Observations
from repb_ray.train.placement import near_here

BIG_ARG = 1 << 20  # arguments larger than this go to the object store once per broadcast
BYTES_PER_SAMPLE = 32  # peak per-sample state of a shard (resident <= 15, end-of-epoch temporaries ~15)
BASE_BYTES = 64 << 20


def memory_request(span: int) -> int:
    """Bytes of memory a process holding the state of `span` ids asks Ray for."""
    return int(BYTES_PER_SAMPLE * span + BASE_BYTES)


class CoordinatorRestarted(RuntimeError):
    """The coordinator or a shard lost its state (its process was restarted); the run resumes from a checkpoint."""


class StaleCall(RuntimeError):
    """A call for another generation or epoch than the coordinator is at."""


class ShardHost:
    """One shard of the policy (ids [lo, hi)) and which chunks each rank delivered this epoch
    (sequence numbers) against how many it said it sent; ready when every rank is complete."""

    def __init__(self, index: int, lo: int, hi: int, policy: str, spec: Spec, world_size: int):
        self.index, self.lo, self.hi = index, lo, hi
        self._make = lambda: policy_class(policy).SHARD(lo, hi, spec)
        self.shard = self._make()
        self.world_size = world_size
        self.generation: str | None = None
        self.epoch: int | None = None
        self.got: dict[int, set] = {}
        self.expect: dict[int, int] = {}

    # -- the coordinator's steps ------------------------------------------------------------------
    def reset(self, generation: str, location: str | None, epoch: int) -> None:
        """A fresh shard (no saved state: a failed attempt's counts must not survive), or the one
        saved at `location` for `epoch` (with the observations of the epoch's first steps when it was
        saved within the epoch); from now on only calls of `generation` are served."""
        self.generation, self.epoch = generation, None
        self.got, self.expect = {}, {}
        if location is None:
            self.shard = self._make()
            return
        arrays, meta = storage.load_npz(storage.join(location, self.file_name()))
        if (meta["lo"], meta["hi"]) != (self.lo, self.hi):
            raise ValueError(f"coordinator state shard {self.index} covers ids [{meta['lo']}, {meta['hi']}), this run's "
                             f"shard covers [{self.lo}, {self.hi}); resume with the same coordinator_shards")
        shard = self._make()
        shard.load_arrays({**arrays, **{k: v for k, v in meta.items() if k not in ("lo", "hi")}}, epoch)
        self.shard = shard

    def call(self, generation: str, name: str, *args):
        """One protocol step (a Call's name) on the shard."""
        self._check_generation(generation)
        return run_step(self.shard, name, args)

    def begin(self, generation: str, epoch: int, world_size: int) -> None:
        self._check_generation(generation)
        self.epoch, self.world_size = epoch, world_size
        self.got, self.expect = {}, {}

    def publish(self, generation: str, chunk: int) -> tuple[list, tuple]:
        """The shard's plan chunks put in the object store, and its summary parts."""
        self._check_generation(generation)
        chunks, parts = self.shard.publish(chunk)
        return [(c.lo, c.hi, ray.put(c)) for c in chunks], parts

    def save(self, generation: str, location: str) -> str:
        self._check_generation(generation)
        path = storage.join(location, self.file_name())
        storage.save_npz(path, self.shard.state_arrays(),
                         {"lo": self.lo, "hi": self.hi, **self.shard.state_scalars()})
        return path

    def file_name(self) -> str:
        return f"shard_{self.index:03d}.npz"

    # -- the ranks' deliveries --------------------------------------------------------------------
    def observe(self, msg: Observations) -> bool:
        self._check(msg.generation, msg.epoch)
        seqs = self.got.setdefault(msg.rank, set())
        if msg.seq in seqs:  # delivered twice: keep the first
            return self.ready()
        seqs.add(msg.seq)
        self.shard.observe_runs(msg.run_steps, msg.run_sizes, msg.ids, msg.scores)
        return self.ready()

    def finish(self, msg: EpochDone) -> bool:
        self._check(msg.generation, msg.epoch)
        self.expect[msg.rank] = int(msg.chunks)
        return self.ready()

    def ready(self) -> bool:
        return len(self.expect) == self.world_size and all(
            len(self.got.get(r, ())) == n for r, n in self.expect.items())

    def missing(self) -> list[int]:
        return sorted(r for r in range(self.world_size)
                      if r not in self.expect or len(self.got.get(r, ())) != self.expect[r])

    def nbytes(self) -> dict:
        return self.shard.nbytes()

    def _check_generation(self, generation: str) -> None:
        if generation != self.generation:
            raise CoordinatorRestarted(f"coordinator shard {self.index} is at generation {self.generation}, not "
                                       f"{generation}: it was restarted or reset and lost that state; the run "
                                       "resumes from its checkpoint")

    def _check(self, generation: str, epoch: int) -> None:
        self._check_generation(generation)
        if epoch != self.epoch:
            raise StaleCall(f"observations for epoch {epoch} but the coordinator is at epoch {self.epoch}")


class ShardActor(ShardHost):
    """A ShardHost in its own actor process; tells the coordinator when its part of the epoch is complete."""

    def __init__(self, index: int, lo: int, hi: int, policy: str, spec: Spec, world_size: int, front):
        super().__init__(index, lo, hi, policy, spec, world_size)
        self.front = front

    def observe(self, msg: Observations) -> None:
        if super().observe(msg):
            self.front.shard_ready.remote(msg.generation, msg.epoch, self.index)

    def finish(self, msg: EpochDone) -> None:
        if super().finish(msg):
            self.front.shard_ready.remote(msg.generation, msg.epoch, self.index)


class LocalShards:
    """The shard group in the coordinator's own process (coordinator_shards = 1, or tests)."""

    def __init__(self, hosts: list[ShardHost]):
        self.hosts = hosts

    def __len__(self) -> int:
        return len(self.hosts)

    def each(self, method, per_shard: list[tuple]) -> list:
        """The ShardHost method `method` (by reference) on every host, with its own arguments."""
        return [getattr(h, method.__name__)(*a) for h, a in zip(self.hosts, per_shard)]

    def call(self, generation: str, request: Call) -> list:
        return self.each(ShardHost.call, [(generation, request.name, *a) for a in request.args_for(len(self))])

    def targets(self, front) -> tuple:
        return (front,) * len(self.hosts)


class ActorShards:
    """The shard group as actors (coordinator_shards = K > 1), each asking for its state's memory."""

    def __init__(self, bounds, policy: str, spec: Spec, world_size: int, front):
        actor = ray.remote(ShardActor)
        self.handles = [actor.options(num_cpus=0, max_restarts=-1, max_task_retries=0, memory=memory_request(hi - lo),
                                      scheduling_strategy=near_here()).remote(j, lo, hi, policy, spec, world_size, front)
                        for j, (lo, hi) in enumerate(bounds)]

    def __len__(self) -> int:
        return len(self.handles)

    def each(self, method, per_shard: list[tuple]) -> list:
        """The ShardHost method `method` (by reference) on every shard actor, with its own arguments."""
        puts: dict = {}

        def big(a):
            if isinstance(a, np.ndarray) and a.nbytes > BIG_ARG:
                if id(a) not in puts:
                    puts[id(a)] = ray.put(a)
                return puts[id(a)]
            return a
        return ray.get([getattr(h, method.__name__).remote(*[big(a) for a in args])
                        for h, args in zip(self.handles, per_shard)])

    def call(self, generation: str, request: Call) -> list:
        return self.each(ShardHost.call, [(generation, request.name, *a) for a in request.args_for(len(self))])

    def targets(self, front) -> tuple:
        return tuple(self.handles)
