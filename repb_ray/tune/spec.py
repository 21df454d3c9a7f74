"""SweepSpec: what a sweep runs (grids over config keys, random draws, baselines, seeds) and how its
report compares them; pure Python, validated before Ray starts. Keys are config keys, dotted into
mappings for a task's or a policy's arguments (task_args.train_subset, policy_args.rho)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from repb_ray.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_name,
    load_yaml_mapping,
    moved_key_hint,
    parse_overrides,
)
from repb_ray.core import rng as rng_streams
from repb_ray.core.checks import suggest

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
DEFAULT_SEARCH = {"policy_args.rho": {"grid": [0.3, 0.5, 0.7]}, "policy_args.window": {"grid": [1, 2, 4, 8, 16]}}
MAPPING_KEYS = ("task_args", "policy_args", "tags", "worker_resources", "fail_at")
SEARCH_ALGS = ("grid", "optuna")


# what the sweep itself sets for every trial: its run's name, where it lives and where it is tracked
SWEEP_OWNED_KEYS = ("name", "output_dir", "storage_path", "tracking_uri")


def check_key(key: str, where: str) -> None:
    """A sweep key: a config key, or a mapping config key dotted into one of its entries, and not one
    the sweep sets for its trials."""
    names = [f.name for f in fields(Config)]
    if key in SWEEP_OWNED_KEYS:
        raise ConfigError(f"{where} key {key!r} cannot vary between trials: the sweep names, stores and tracks each "
                          f"trial itself; set {key} once for the whole sweep (--set {key}=... or in base)")
    head = key.split(".", 1)[0]
    if key in names or (head in MAPPING_KEYS and "." in key and key.split(".", 1)[1]):
        return
    hint = moved_key_hint(key)
    if hint:
        raise ConfigError(f"{where} key {key!r}: {hint}")
    raise ConfigError(f"{where} key {key!r} is not a config key{suggest(key, names)}")


@dataclass(frozen=True)
class SweepSpec:
    """`base` holds Config keys shared by every trial. Trials are the union of
      - `search`: a key to {grid: [...]} (crossed), or {choice: [...]}, {uniform|loguniform|randint:
        [lo, hi]} (drawn `num_samples` times per grid point, from the sweep's own seed),
      - `grids`: more cross products, each a mapping of keys to lists (e.g. one per method),
      - `baselines`: single trials given as overrides (e.g. {policy: full}),
    each repeated for every seed in `seeds` (a list, or a count: 5 means seeds 0..4); `seed_keys` are
    config keys that take each trial's seed too (task_args.subset_seed, task_args.noise_seed: each seed
    draws its own data subset and label noise, so the seeds sample the data as well). `asha` stops
    weak trials early; `max_concurrent_trials` caps how many run at once (default: as many as the
    cluster's resources hold, re-read as nodes join). `reference` names the method every other is
    compared with, seed by seed, in the report. `search_alg: optuna` draws `num_samples` trials from
    the `search` distributions with Optuna, for the Pareto front of the metric and the pruned fraction."""

    name: str = "sweep"
    base: dict = field(default_factory=dict)
    search: dict = field(default_factory=lambda: dict(DEFAULT_SEARCH))
    grids: list = field(default_factory=list)
    baselines: list = field(default_factory=list)
    seeds: Any | None = None
    seed_keys: list = field(default_factory=list)
    num_samples: int = 1
    asha: dict | None = None
    max_concurrent_trials: int | None = None
    sweep_seed: int = 0
    reference: str = "RePB"
    search_alg: str = "grid"

    def __post_init__(self):
        check_name(self.name, "sweep name")
        base = self.base_config()  # validates base keys and values
        if 0 in self._declared_values("num_workers", base):  # not [0, k]
            raise ConfigError("num_workers=0 (local mode) cannot run inside Tune trials (Ray Train's context is "
                              "not available there); use num_workers >= 1")
        if not isinstance(self.search, dict):
            raise ConfigError(f"search must be a mapping of config keys to distributions, got {self.search!r}")
        for key, dist in self.search.items():
            check_key(key, "search")
            if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ConfigError(f"search.{key} must be one of {{grid|choice: [...]}}, {{uniform|loguniform|randint: "
                                  f"[lo, hi]}}, got {dist!r}")
            kind, values = next(iter(dist.items()))
            if not isinstance(values, list) or not values:
                raise ConfigError(f"search.{key}.{kind} needs a non-empty list, got {values!r}")
            if kind in ("uniform", "loguniform", "randint") and (len(values) != 2 or not values[0] < values[1]):
                raise ConfigError(f"search.{key}.{kind} needs [lo, hi] with lo < hi, got {values!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"search.{key}.loguniform needs lo > 0, got {values!r}")
            for v in (values if kind in ("grid", "choice") else values[:1]):
                self.config_of({key: v})  # every value must make a valid config
        if not isinstance(self.grids, list):
            raise ConfigError(f"grids must be a list of mappings (config key -> list of values), got {self.grids!r}")
        for g in self.grids:
            if not isinstance(g, dict) or not g or not all(isinstance(v, list) and v for v in g.values()):
                raise ConfigError(f"each grid must map config keys to non-empty lists, got {g!r}")
            for key in g:
                check_key(key, "grid")
            for combo in _cross(g):
                self.config_of(combo)
        if not isinstance(self.baselines, list):
            raise ConfigError(f"baselines must be a list of mappings of config overrides, got {self.baselines!r}")
        for b in self.baselines:
            if not isinstance(b, dict):
                raise ConfigError(f"each baseline must be a mapping of config overrides, got {b!r}")
            for key in b:
                check_key(key, "baseline")
            self.config_of(b)
        for s in self.seed_list() or []:
            self.config_of({"seed": s})
        if not isinstance(self.seed_keys, list) or not all(isinstance(k, str) for k in self.seed_keys):
            raise ConfigError(f"seed_keys must be a list of config keys (e.g. [task_args.subset_seed]), got "
                              f"seed_keys={self.seed_keys!r}")
        if self.seed_keys and self.seeds is None:
            raise ConfigError(f"seed_keys={self.seed_keys} take each trial's seed: give seeds too (a count or a list)")
        for key in self.seed_keys:
            if key == "seed":
                raise ConfigError("seed_keys: 'seed' is each trial's seed already; list the other keys that follow it")
            check_key(key, "seed_keys")
            for s in self.seed_list() or []:
                self.config_of({key: s})
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ConfigError(f"num_samples must be an integer >= 1, got num_samples={self.num_samples!r}")
        if self.asha is not None and not isinstance(self.asha, dict):
            raise ConfigError(f"asha must be a mapping like {{grace_period: 2}} or null, got {self.asha!r}")
        if self.asha and any(v != 1 for v in self._declared_values("eval_every", base)):
            raise ConfigError("asha stops trials on each epoch's test metric: use eval_every=1 with asha (or drop asha "
                              "to evaluate every k-th epoch)")
        if self.max_concurrent_trials is not None and (isinstance(self.max_concurrent_trials, bool) or not isinstance(
                self.max_concurrent_trials, int) or self.max_concurrent_trials < 1):
            raise ConfigError(f"max_concurrent_trials must be an integer >= 1 or null, got {self.max_concurrent_trials!r}")
        if not isinstance(self.reference, str) or not self.reference:
            raise ConfigError(f"reference must name a method of the report (e.g. RePB), got reference={self.reference!r}")
        if self.search_alg not in SEARCH_ALGS:
            raise ConfigError(f"search_alg must be one of {', '.join(SEARCH_ALGS)}, got search_alg={self.search_alg!r}"
                              f"{suggest(str(self.search_alg), SEARCH_ALGS)}")
        if self.search_alg == "optuna" and not any("grid" not in d for d in self.search.values()):
            raise ConfigError("search_alg=optuna needs at least one search key with a distribution (uniform, "
                              "loguniform, randint or choice) to draw from")
        if self.search_alg == "optuna" and (self.asha or self.grids or self.baselines or self.seeds is not None):
            raise ConfigError("search_alg=optuna draws every trial from `search`: drop asha, grids, baselines and "
                              "seeds (or use search_alg=grid)")
        if self.search_alg == "grid" and not self.trials():
            raise ConfigError("the sweep has no trial: give search, grids or baselines")

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None, values: dict | None = None) -> SweepSpec:
        """The sweep file, with --set overrides: `sweep.key=value` sets a sweep key, anything else a
        key of `base` (dotted keys go into mappings, e.g. task_args.train_subset=1000); `values` are
        base keys set as given (the CLI's --output-dir, --tracking-uri)."""
        data = load_yaml_mapping(path, "sweep")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown sweep key {key!r}{suggest(key, names)}; sweep keys: {', '.join(names)}")
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        base = dict(data.get("base") or {})
        for key, value in {**parse_overrides(overrides or []), **(values or {})}.items():
            if key.startswith("sweep."):
                data = apply_overrides(data, {key[len("sweep."):]: value})
            else:
                base = apply_overrides(base, {key: value})
        data["base"] = base
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown sweep key {key!r}{suggest(key, names)}; sweep keys: {', '.join(names)}")
        if "search" in data and data["search"] is None:
            data["search"] = {}
        return cls(**data)

    def base_config(self) -> Config:
        if not isinstance(self.base, dict):
            raise ConfigError(f"base must be a mapping of config keys, got base={self.base!r}")
        return Config.from_dict({**self.base, "name": self.name})

    def config_of(self, overrides: dict) -> Config:
        """The config of a trial with these overrides (dotted keys go into mappings)."""
        return Config.from_dict(apply_overrides({**self.base, "name": self.name}, overrides))

    def seed_list(self) -> list[int] | None:
        s = self.seeds
        if s is None:
            return None
        if isinstance(s, int) and not isinstance(s, bool):
            if s < 1:
                raise ConfigError(f"seeds must be a count >= 1 or a non-empty list of integers, got seeds={s}")
            return list(range(s))
        if not isinstance(s, list) or not s or not all(isinstance(x, int) and not isinstance(x, bool) for x in s):
            raise ConfigError(f"seeds must be a count >= 1 or a non-empty list of integers, got seeds={s!r}")
        if len(set(s)) != len(s):
            raise ConfigError(f"seeds must not repeat, got seeds={s!r}")
        return list(s)

    def _declared_values(self, key: str, base) -> list:
        """`key`'s value in `base` and in every override written in the sweep that sets it."""
        return [getattr(base, key)] + [t[key] for t in self._declared_trials() if key in t]

    def _declared_trials(self) -> list[dict]:
        """The overrides written in the sweep (grid values, grids, baselines), before any check."""
        search = self.search if isinstance(self.search, dict) else {}
        out = [{k: v} for k, d in search.items() if isinstance(d, dict) for v in (d.get("grid") or d.get("choice") or [])]
        for g in self.grids if isinstance(self.grids, list) else []:
            if isinstance(g, dict):
                out += [{k: v} for k, vs in g.items() if isinstance(vs, list) for v in vs]
        return out + [b for b in (self.baselines if isinstance(self.baselines, list) else []) if isinstance(b, dict)]

    def trials(self) -> list[dict]:
        """Every trial's overrides, in a fixed order (what a grid sweep runs; its place in this list
        names the trial)."""
        grid = {k: v["grid"] for k, v in self.search.items() if "grid" in v}
        randoms = {k: v for k, v in self.search.items() if "grid" not in v}
        out = []
        if self.search_alg == "grid":
            for combo in (_cross(grid) if self.search else []):
                for s in range(self.num_samples if randoms else 1):
                    rng = rng_streams.sweep_draws(self.sweep_seed, len(out), s)
                    out.append({**combo, **{k: _draw(d, rng) for k, d in randoms.items()}})
        for g in self.grids:
            out += _cross(g)
        out += [dict(b) for b in self.baselines]
        seeds = self.seed_list()
        if seeds is not None:
            out = [{**t, "seed": s, **{k: s for k in self.seed_keys}} for t in out for s in seeds]
        unique = []
        for t in out:  # a baseline that repeats a grid point runs once
            if t not in unique:
                unique.append(t)
        return unique

    def fingerprint(self) -> str:
        """What decides the sweep's trials (not where its outputs go): a resumed sweep must match it."""
        d = asdict(self)
        d["base"] = {k: v for k, v in d["base"].items() if k not in ("output_dir", "tracking_uri", "storage_path")}
        d.pop("max_concurrent_trials")
        if not d["seed_keys"]:   # as before seed_keys existed: a sweep started then resumes now
            d.pop("seed_keys")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _cross(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] if keys else [{}]


def _draw(dist: dict, rng) -> Any:
    kind, v = next(iter(dist.items()))
    if kind == "choice":
        return v[int(rng.integers(len(v)))]
    if kind == "uniform":
        return float(rng.uniform(v[0], v[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(v[0]), math.log(v[1]))))
    return int(rng.integers(v[0], v[1]))
