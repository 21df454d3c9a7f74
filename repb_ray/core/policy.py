"""Policy: a pruning rule's global state (epoch, plan sizes, per-epoch decisions) and its end of epoch
as protocol steps over shards of the id space; runs anywhere. The API of a plain loop (observe,
finish_epoch, plan, state_dict) is LocalPolicy's (core/local.py), with the shards in its process.

A policy's end of epoch is a generator (`conduct_next`) that yields Calls ("run this step on every
shard") and combines their small results (core.protocol). LocalPolicy runs them on in-process
shards; the Ray coordinator runs the same generators on shard actors, so plans are the same for any
number of shards, bit for bit.

A policy class carries everything the rest of the package needs to know about it: its parameters
and their checks (`PARAMS`, `check_params`), its name in reports (`display_name`, `label`), the
parameter a budget sets (`KNOB`), what it records per epoch (`DECISIONS`), whether it takes a
budget (`BUDGET`). Adding a policy is one file with one such class, plus its line in core.registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repb_ray.core import rng
from repb_ray.core.budget import check_budget, check_keeps_a_sample, exact_size
from repb_ray.core.checks import check_int, suggest
from repb_ray.core.plan import pruned_fraction
from repb_ray.core.protocol import Call, Spec, step
from repb_ray.core.rng import rng_after
from repb_ray.core.select import RadixSelect, radix_threshold, smallest_mask
from repb_ray.core.shard import Scratch, Shard

STATE_FORMAT = 3
RUN_PARAMS = ("num_epochs", "target_pruned")  # set by the run (its epochs and budget), not in policy_args


class Policy:
    """The global state (epoch, plan sizes, per-epoch decisions) and the conduct of each epoch's end.

    Subclasses set `name`, `PARAMS` (name -> default, `...` when required), `SHARD` and define
    `_check_params` (classmethod), `conduct_first()` and `conduct_next(world_size)`.
    """

    name = "base"
    display_name = "base"
    PARAMS: dict = {}
    SHARD = Shard
    KNOB: str | None = None        # the parameter a budget sets before each epoch (reports show it)
    DECISIONS: tuple = ()          # per-epoch decision keys (history, console, summary)
    BUDGET = True                  # whether target_pruned applies
    LABEL_PARAMS: tuple = ()       # parameters that tell variants apart in reports

    def __init__(self, num_samples: int, seed: int = 0, world_size: int = 1, *, shards: int = 1, **params):
        self.params = self.check(num_samples, seed, world_size, **params)
        self.num_samples, self.seed, self.world_size = int(num_samples), int(seed), int(world_size)
        self.num_shards = check_int("shards", shards, minimum=1)   # the id-range shards it conducts
        if self.num_shards > self.num_samples:
            raise ValueError(f"shards={shards} is larger than num_samples={num_samples}; use fewer shards")
        self.spec = Spec(self.name, self.num_samples, self.seed, dict(self.params))
        self.epoch = 0
        self.plan_sizes: list[int] = []   # |D_1|, ..., |D_E|: the current epoch E's plan included (not yet trained)
        self.history: list[dict] = []     # the decision of each epoch's plan (DECISIONS keys)

    # -- parameters -------------------------------------------------------------------------------
    @classmethod
    def check(cls, num_samples: int, seed: int = 0, world_size: int = 1, **params) -> dict:
        """Everything a policy of this class checks when it is made (TypeError/ValueError naming the
        value and the fix), without making one; returns the parameters with defaults filled in."""
        n = check_int("num_samples", num_samples, minimum=1)
        check_int("seed", seed, minimum=0)
        _check_world_size(world_size, n)
        p = cls.check_params(params)
        cls._check_size(n, p)
        return p

    @classmethod
    def check_params(cls, params: dict) -> dict:
        """The parameters with defaults filled in, validated (TypeError/ValueError naming the value)."""
        for key in params:
            if key not in cls.PARAMS:
                known = ", ".join(sorted(k for k in cls.PARAMS if k not in RUN_PARAMS)) or "none"
                raise TypeError(f"unknown parameter {key!r} for policy {cls.name!r}{suggest(key, cls.PARAMS)}; "
                                f"its parameters are: {known}")
        missing = [k for k, v in cls.PARAMS.items() if v is ... and k not in params]
        if missing:
            raise TypeError(f"policy {cls.name!r} needs {', '.join(f'{k}=' for k in missing)}")
        p = cls._check_params({**cls.PARAMS, **params})
        if cls.BUDGET:
            check_budget(cls.name, p)
        return p

    @classmethod
    def _check_params(cls, params: dict) -> dict:
        return params

    @classmethod
    def run_params(cls, policy_args: dict, *, epochs: int, target_pruned: float | None = None) -> dict:
        """The policy's parameters for a run: `policy_args` plus what the run sets (its length where
        the policy needs it, its budget), validated."""
        args = dict(policy_args or {})
        for key in RUN_PARAMS:
            if key in args:
                what = "epochs" if key == "num_epochs" else "target_pruned"
                raise TypeError(f"policy_args.{key} is set by the run: set the config key {what!r} instead")
        if target_pruned is not None:
            if not cls.BUDGET:
                raise ValueError(f"target_pruned does not apply to policy={cls.name}; drop it or pick another policy")
            if cls.KNOB is not None and cls.KNOB in args:
                raise ValueError(f"policy_args.{cls.KNOB}={args[cls.KNOB]!r} and target_pruned={target_pruned!r} are both "
                                 f"set, and the budget sets {cls.KNOB} before each epoch: drop one of them")
            args["target_pruned"] = target_pruned
        if "num_epochs" in cls.PARAMS and (cls.PARAMS["num_epochs"] is ... or target_pruned is not None):
            args["num_epochs"] = epochs
        return cls.check_params(args)

    @classmethod
    def label(cls, params: dict, varying: tuple = ()) -> str:
        """The method's name in reports: the display name, with the `varying` parameters that tell
        this variant from the sweep's others (`window` shows as W=...; a switch shows only when it is off
        its default, so an ablation is `RePB (lwp=False)` beside `RePB`)."""
        shown = [k for k in varying if not (isinstance(params[k], bool) and params[k] == cls.PARAMS.get(k))]
        extras = [f"W={params['window']}" if k == "window" else f"{k}={params[k]}" for k in shown]
        return cls.display_name + (f" ({', '.join(extras)})" if extras else "")

    @classmethod
    def _check_size(cls, num_samples: int, params: dict) -> None:
        """Checks that need num_samples (subclasses)."""

    def _check_world_size(self, world_size) -> int:
        return _check_world_size(world_size, self.num_samples)

    # -- accounting -------------------------------------------------------------------------------
    def pruned_fraction(self) -> float:
        """1 - sum_E |D_E| / (E n) over the epochs planned so far, the current one included."""
        return pruned_fraction(self.plan_sizes, self.num_samples)

    def budget_status(self, epochs: int | None = None) -> dict | None:
        """With target_pruned: the pruned fraction over the first `epochs` (default num_epochs) epochs
        and whether it is within 1 point of the target."""
        target = self.params.get("target_pruned")
        if target is None:
            return None
        pruned = pruned_fraction(self.plan_sizes[: epochs or self.params["num_epochs"]], self.num_samples)
        return {"target_pruned": target, "pruned": pruned, "reached": abs(pruned - target) <= 0.01}

    # -- state ------------------------------------------------------------------------------------
    def global_state(self) -> dict:
        return {"format": STATE_FORMAT, "policy": self.name, "params": dict(self.params),
                "num_samples": self.num_samples, "seed": self.seed, "world_size": self.world_size,
                "epoch": self.epoch, "plan_sizes": list(self.plan_sizes), "history": [dict(h) for h in self.history]}

    def check_state(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {state.get('format')!r} is not supported (expected {STATE_FORMAT}); "
                             "it was saved by another version of repb_ray: start the run afresh")
        for key in ("policy", "params", "num_samples", "seed"):
            mine = self.name if key == "policy" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"state has {key}={state.get(key)!r} but this policy has {key}={mine!r}; "
                                 "build the policy with the same arguments as the one that saved the state")

    def load_global_state(self, state: dict) -> None:
        self.check_state(state)
        self.world_size = int(state["world_size"])
        self.epoch = int(state["epoch"])
        self.plan_sizes = [int(s) for s in state["plan_sizes"]]
        self.history = [dict(h) for h in state.get("history", [])]

    # -- protocol pieces shared by the policies ---------------------------------------------------
    def _validate(self):
        stats = yield Call(Shard.validate)
        return {"m": sum(s["m"] for s in stats), "max_abs": max(s["max_abs"] for s in stats),
                "max_step": max(s["max_step"] for s in stats)}

    def _select_smallest(self, k: int, total: int):
        """Conduct an exact k-smallest selection over the keys each shard holds in tmp.select;
        each shard ends with the chosen mask in tmp.keep. Returns the kept counts per shard."""
        if k >= total or self.num_shards == 1:
            return (yield Call(SelectingShard.select_local, (k,)))
        drive_radix = radix_threshold(k)
        request = next(drive_radix)
        while True:
            hists = yield Call(SelectingShard.select_histogram, request)
            try:
                request = drive_radix.send(np.sum(hists, axis=0))
            except StopIteration as stop:
                threshold, ties = stop.value
                break
        counts = yield Call(SelectingShard.select_counts, (threshold,))
        per = []
        for _below, equal in counts:
            take = min(ties, equal)
            ties -= take
            per.append((threshold, take))
        return (yield Call(SelectingShard.select_apply, per_shard=per))

    def _trim_commit(self, epoch: int, kept: list[int], consumed: int, world_size: int, info: dict):
        """Trim the proposed plan to a multiple of world_size with the epoch's generator (after the
        `consumed` uniforms), commit it on every shard and record it."""
        k = sum(kept)
        extra = k % world_size
        if k - extra == 0:
            raise ValueError(f"the plan for epoch {epoch} is empty (num_samples={self.num_samples}, "
                             f"params={self.params}); lower the pruning rate or use fewer workers")
        drops: list[list[int]] = [[] for _ in kept]
        if extra:
            pos = np.sort(rng_after(self.seed, epoch, consumed).choice(k, size=extra, replace=False))
            offsets = np.concatenate([[0], np.cumsum(kept)])
            for j in range(len(kept)):
                drops[j] = (pos[(pos >= offsets[j]) & (pos < offsets[j + 1])] - offsets[j]).tolist()
        sizes = yield Call(Shard.commit, per_shard=[(epoch, d, info) for d in drops])
        self.epoch = epoch
        self.plan_sizes.append(int(sum(sizes)))
        self.history.append(dict(info))
        return self.plan_sizes[-1]

    def conduct_first(self):
        """Epoch 1: the whole dataset (trimmed to the world size)."""
        kept = yield Call(Shard.keep_all)
        yield from self._trim_commit(1, kept, 0, self.world_size, {})

    def conduct_next(self, world_size: int):
        raise NotImplementedError

    def conduct_retrim(self, world_size: int):
        """Trim the current plan to a multiple of a new world size, which the policy takes."""
        self.world_size = self._check_world_size(world_size)
        k = self.plan_sizes[-1]
        extra = k % world_size
        if extra == 0:
            return
        if k - extra == 0:
            raise ValueError(f"the plan of epoch {self.epoch} has {k} samples, fewer than world_size={world_size}")
        pos = np.sort(rng.retrim(self.seed, self.epoch).choice(k, size=extra, replace=False))
        kept = yield Call(Shard.current_size)
        offsets = np.concatenate([[0], np.cumsum(kept)])
        drops = [(pos[(pos >= offsets[j]) & (pos < offsets[j + 1])] - offsets[j]).tolist() for j in range(len(kept))]
        sizes = yield Call(Shard.retrim, per_shard=[(d,) for d in drops])
        self.plan_sizes[-1] = int(sum(sizes))


class SizedPolicy(Policy):
    """A policy whose knob is its plan's size (prune_ratio): round((1 - prune_ratio) n) per epoch, or with a
    budget the size that spreads what is left of it over the epochs left (budget.exact_size)."""

    KNOB = "prune_ratio"

    @classmethod
    def _check_size(cls, num_samples: int, params: dict) -> None:
        check_keeps_a_sample(params, num_samples)

    def _size(self, epoch: int) -> int:
        return exact_size(self.params, self.num_samples, self.plan_sizes, epoch)


def _check_world_size(world_size, num_samples: int) -> int:
    ws = check_int("world_size", world_size, minimum=1)
    if ws > num_samples:
        raise ValueError(f"world_size={ws} is larger than num_samples={num_samples}; use fewer workers or more data")
    return ws


@dataclass
class SelectScratch(Scratch):
    select: np.ndarray | None = None     # the selection keys of the range (uint64)
    radix: RadixSelect | None = None     # the radix selection under way over them


class SelectingShard(Shard):
    """A shard that can take part in an exact k-smallest selection over keys in tmp.select."""

    SCRATCH = SelectScratch
    tmp: SelectScratch

    def uniform_keys(self, epoch: int) -> np.ndarray:
        """Selection keys ordering this range by its uniforms of the epoch's stream (u >= 0: the float
        bits are ordered like the values)."""
        keys = np.empty(self.span, np.uint64)
        for start, u in rng.uniforms(self.spec.seed, epoch, self.lo, self.hi):
            keys[start - self.lo: start - self.lo + u.shape[0]] = u.view(np.uint64)
        return keys

    @step
    def select_local(self, k: int) -> int:
        self.tmp.keep = smallest_mask(self.tmp.take("select"), k)
        return int(np.count_nonzero(self.tmp.keep))

    @step
    def select_histogram(self, prefix: int, bits: int) -> np.ndarray:
        if self.tmp.radix is None:
            self.tmp.radix = RadixSelect(self.tmp.take("select"))
        return self.tmp.need("radix").histogram(prefix, bits)

    @step
    def select_counts(self, threshold: int) -> tuple[int, int]:
        return self.tmp.need("radix").counts(threshold)

    @step
    def select_apply(self, threshold: int, ties: int) -> int:
        self.tmp.keep = self.tmp.take("radix").mask(threshold, ties)
        return int(np.count_nonzero(self.tmp.keep))
