"""The end-of-epoch protocol: a policy conducts steps (Calls) that every id-range shard runs, and
one driver feeds each step's results back; the same generators run on in-process shards or on
shard actors, so plans are the same for any number of shards. A step is a shard method marked
`@step` and named in a Call by reference (`Call(RePBShard.decide, ...)`); a shard class knows its
steps (`STEPS`) once it is defined, and runs no other method for a Call. Runs anywhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def step(method: Callable) -> Callable:
    """Mark a shard method as a protocol step (what a Call may name)."""
    setattr(method, "protocol_step", True)  # noqa: B010 - an attribute functions do not declare
    return method


def steps_of(cls) -> frozenset:
    """The protocol steps of a shard class, inherited ones included (what `Shard.STEPS` holds)."""
    return frozenset(name for klass in cls.__mro__ for name, v in vars(klass).items()
                     if getattr(v, "protocol_step", False))


@dataclass(frozen=True)
class Call:
    """Run the step `method` (a shard method marked @step) on every shard: with `args` for all, or
    `per_shard[j]` for shard j. It runs as the shard's own method of that name (a subclass's override)."""

    method: Callable
    args: tuple = ()
    per_shard: list | None = None

    def __post_init__(self):
        if not getattr(self.method, "protocol_step", False):
            raise TypeError(f"{getattr(self.method, '__qualname__', self.method)!r} is not a protocol step: name a "
                            "shard method marked @step")

    @property
    def name(self) -> str:
        return self.method.__name__

    def args_for(self, shards: int) -> list[tuple]:
        """The arguments of each of `shards` shards."""
        if self.per_shard is None:
            return [self.args] * shards
        assert len(self.per_shard) == shards, (self.name, len(self.per_shard), shards)
        return [tuple(a) for a in self.per_shard]


@dataclass(frozen=True)
class Spec:
    """What every shard of a policy shares (read-only)."""

    name: str
    num_samples: int
    seed: int
    params: dict = field(default_factory=dict)


def drive(gen, call: Callable[[Call], list]):
    """The protocol driver: run a conducting generator, sending each Call's per-shard results back,
    until it returns; returns its value. Every place that runs a protocol goes through here."""
    result = None
    while True:
        try:
            request = gen.send(result)
        except StopIteration as stop:
            return stop.value
        result = call(request)


def run_step(shard, name: str, args: tuple):
    """The step `name` on one shard (in any process); a name the shard's class has no step of fails."""
    if name not in type(shard).STEPS:
        raise TypeError(f"{type(shard).__name__} has no protocol step {name!r} (its steps: {sorted(type(shard).STEPS)})")
    return getattr(shard, name)(*args)


def call_shards(shards: Sequence, request: Call) -> list:
    """One protocol step on in-process shards."""
    return [run_step(s, request.name, a) for s, a in zip(shards, request.args_for(len(shards)))]


def split_range(num_samples: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous id ranges of near-equal size covering [0, num_samples)."""
    edges = [num_samples * j // shards for j in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def check_bounds(bounds, num_samples: int) -> list[tuple[int, int]]:
    out = [(int(a), int(b)) for a, b in bounds]
    if not out or out[0][0] != 0 or out[-1][1] != num_samples or any(
            a >= b for a, b in out) or any(out[j][1] != out[j + 1][0] for j in range(len(out) - 1)):
        raise ValueError(f"shard bounds must be non-empty contiguous ranges covering [0, {num_samples}), got {bounds}")
    return out
