"""SweepSpec: what a sweep searches (grid/random over Config fields), its baselines and resources."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from repb_ray.config import Config, ConfigError, load_yaml_mapping, parse_overrides
from repb_ray.core.checks import suggest

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
DEFAULT_SEARCH = {"rho": {"grid": [0.3, 0.5, 0.7]}, "window": {"grid": [1, 2, 4, 8, 16]}}


@dataclass(frozen=True)
class SweepSpec:
    """`base` holds Config keys shared by every trial; `search` maps a Config key to one of
    {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]};
    `baselines` are extra trials given as Config overrides (e.g. {policy: full})."""

    name: str = "sweep"
    base: dict = field(default_factory=dict)
    search: dict = field(default_factory=lambda: dict(DEFAULT_SEARCH))
    baselines: list = field(default_factory=list)
    num_samples: int = 1                     # draws of the random dimensions (Tune's num_samples)
    asha: Optional[dict] = None              # {grace_period: 1, reduction_factor: 2} stops weak trials early
    max_concurrent_trials: Optional[int] = None   # default: derived from the cluster's CPUs/GPUs

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
            for v in (values if kind in ("grid", "choice") else values[:1]):
                base.replace(**{key: v})  # every value must make a valid config
        for b in self.baselines:
            if not isinstance(b, dict):
                raise ConfigError(f"each baseline must be a mapping of config overrides, got {b!r}")
            base.replace(**b)
        if self.asha is not None and not isinstance(self.asha, dict):
            raise ConfigError(f"asha must be a mapping like {{grace_period: 2}} or null, got {self.asha!r}")

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None) -> "SweepSpec":
        data = load_yaml_mapping(path, "sweep")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown sweep key {key!r}{suggest(key, names)}; sweep keys: {', '.join(names)}")
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        base = dict(data.get("base") or {})
        for key, value in parse_overrides(overrides or []).items():
            if key.startswith("sweep."):
                data[key[len("sweep."):]] = value
            else:
                base[key] = value
        data["base"] = base
        return cls(**data)

    def base_config(self) -> Config:
        return Config.from_dict({**self.base, "name": self.name})

    def grid_trials(self) -> list[dict]:
        """The explicit trials: the cross product of the grid dimensions, then the baselines."""
        grid = {k: v["grid"] for k, v in self.search.items() if "grid" in v}
        keys = list(grid)
        trials = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
        return trials + [dict(b, _baseline=True) for b in self.baselines]

    def random_space(self) -> dict[str, Any]:
        from ray import tune
        make = {"choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
                "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
        return {k: make[kind](vals) for k, d in self.search.items() for kind, vals in d.items() if kind != "grid"}
