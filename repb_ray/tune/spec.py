"""SweepSpec: what a sweep runs (grids over Config fields, random draws, baselines, seeds) and its
admission of trials; pure Python, validated before Ray starts."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import numpy as np

from repb_ray.config import Config, ConfigError, apply_overrides, load_yaml_mapping, parse_overrides
from repb_ray.core.checks import suggest

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
DEFAULT_SEARCH = {"rho": {"grid": [0.3, 0.5, 0.7]}, "window": {"grid": [1, 2, 4, 8, 16]}}


@dataclass(frozen=True)
class SweepSpec:
    """`base` holds Config keys shared by every trial. Trials are the union of
      - `search`: a Config key to {grid: [...]} (crossed), or {choice: [...]}, {uniform|loguniform|
        randint: [lo, hi]} (drawn `num_samples` times per grid point, from the sweep's own seed),
      - `grids`: more cross products, each a mapping of Config keys to lists (e.g. one per method),
      - `baselines`: single trials given as Config overrides (e.g. {policy: full}),
    each repeated for every seed in `seeds`. `asha` stops weak trials early; `max_concurrent_trials`
    caps how many run at once (default: as many as the cluster's resources hold, re-read as nodes
    join)."""

    name: str = "sweep"
    base: dict = field(default_factory=dict)
    search: dict = field(default_factory=lambda: dict(DEFAULT_SEARCH))
    grids: list = field(default_factory=list)
    baselines: list = field(default_factory=list)
    seeds: Optional[list] = None
    num_samples: int = 1
    asha: Optional[dict] = None
    max_concurrent_trials: Optional[int] = None
    sweep_seed: int = 0

    def __post_init__(self):
        base = self.base_config()  # validates base keys and values
        if base.num_workers == 0:
            raise ConfigError("num_workers=0 (local mode) cannot run inside Tune trials (Ray Train's context is "
                              "not available there); use num_workers >= 1")
        names = {f.name for f in fields(Config)}
        if not isinstance(self.search, dict):
            raise ConfigError(f"search must be a mapping of config keys to distributions, got {self.search!r}")
        for key, dist in self.search.items():
            if key not in names:
                raise ConfigError(f"search key {key!r} is not a config key{suggest(key, names)}")
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
                base.replace(**{key: v})  # every value must make a valid config
        if not isinstance(self.grids, list):
            raise ConfigError(f"grids must be a list of mappings (config key -> list of values), got {self.grids!r}")
        for g in self.grids:
            if not isinstance(g, dict) or not g or not all(isinstance(v, list) and v for v in g.values()):
                raise ConfigError(f"each grid must map config keys to non-empty lists, got {g!r}")
            for combo in _cross(g):
                base.replace(**combo)
        for b in self.baselines:
            if not isinstance(b, dict):
                raise ConfigError(f"each baseline must be a mapping of config overrides, got {b!r}")
            base.replace(**b)
        if self.seeds is not None:
            if not isinstance(self.seeds, list) or not self.seeds:
                raise ConfigError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
            for s in self.seeds:
                base.replace(seed=s)
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ConfigError(f"num_samples must be an integer >= 1, got num_samples={self.num_samples!r}")
        if self.asha is not None and not isinstance(self.asha, dict):
            raise ConfigError(f"asha must be a mapping like {{grace_period: 2}} or null, got {self.asha!r}")
        if self.max_concurrent_trials is not None and (isinstance(self.max_concurrent_trials, bool) or not isinstance(
                self.max_concurrent_trials, int) or self.max_concurrent_trials < 1):
            raise ConfigError(f"max_concurrent_trials must be an integer >= 1 or null, got {self.max_concurrent_trials!r}")
        if not self.trials():
            raise ConfigError("the sweep has no trial: give search, grids or baselines")

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None) -> "SweepSpec":
        """The sweep file, with --set overrides: `sweep.key=value` sets a sweep key, anything else a
        key of `base` (dotted keys go into mappings, e.g. task_args.train_subset=1000)."""
        data = load_yaml_mapping(path, "sweep")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown sweep key {key!r}{suggest(key, names)}; sweep keys: {', '.join(names)}")
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        base = dict(data.get("base") or {})
        for key, value in parse_overrides(overrides or []).items():
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
        return Config.from_dict({**self.base, "name": self.name})

    def trials(self) -> list[dict]:
        """Every trial's Config overrides, in a fixed order (what the sweep runs)."""
        grid = {k: v["grid"] for k, v in self.search.items() if "grid" in v}
        randoms = {k: v for k, v in self.search.items() if "grid" not in v}
        out = []
        for combo in (_cross(grid) if self.search else []):
            for s in range(self.num_samples if randoms else 1):
                rng = np.random.default_rng([self.sweep_seed, len(out), s])
                out.append({**combo, **{k: _draw(d, rng) for k, d in randoms.items()}})
        for g in self.grids:
            out += _cross(g)
        out += [dict(b) for b in self.baselines]
        if self.seeds is not None:
            out = [{**t, "seed": s} for t in out for s in self.seeds]
        unique = []
        for t in out:  # a baseline that repeats a grid point runs once
            if t not in unique:
                unique.append(t)
        return unique


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
