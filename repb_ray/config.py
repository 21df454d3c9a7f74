"""Config: the one frozen, validated dataclass behind the CLI, YAML files and Tune trials."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from repb_ray.core.checks import check_bool, check_float, check_int, suggest
from repb_ray.core.policy import POLICY_NAMES
from repb_ray.torch.schedule import OPTIMIZERS, SCHEDULES

SCORES = ("loss", "grad_norm")
FAIL_KINDS = ("worker", "kill", "coordinator")  # raise in a worker, SIGKILL a worker, end the coordinator
MOVED_TO_TASK_ARGS = {"dataset": "task", "data_dir": "task_args.data_dir", "download": "task_args.download",
                      "train_subset": "task_args.train_subset", "test_subset": "task_args.test_subset",
                      "synthetic_size": "task_args.size", "model": "task_args.model", "augment": "task_args.augment"}


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class Config:
    """Everything a training run needs. `policy_params()` gives the core policy's arguments."""

    # run
    name: Optional[str] = None            # run name; re-running with the same name resumes the run
    seed: int = 0
    epochs: int = 15
    output_dir: str = "runs"              # summary.json and the MLflow store; a run gets output_dir/name
    storage_path: Optional[str] = None    # Ray Train storage (shared on a cluster); default output_dir/ray_results
    # the task: what is trained (built-in name or module:Class) and its arguments
    task: str = "fashion_mnist"
    task_args: dict = field(default_factory=dict)
    # pruning policy
    policy: str = "repb"
    rho: float = 0.5
    window: int = 1                       # W, in global batches
    lwp: bool = True
    resample: bool = True
    ctr: bool = True
    ctr_max: Optional[float] = None
    ctr_normalize: bool = False           # normalise weights to mean 1 in each batch
    prune_ratio: float = 0.5              # infobatch / random / egreedy / ucb
    delta: float = 0.875                  # infobatch annealing
    anneal: bool = True                   # infobatch: false is InfoBatch* (no full-data epochs at the end)
    epsilon: float = 0.1                  # egreedy
    ucb_c: float = 1.0                    # ucb
    ema_alpha: float = 0.8                # egreedy / ucb moving statistics
    select_every: int = 1                 # egreedy / ucb: epochs between selections
    target_pruned: Optional[float] = None  # a pruning budget: fraction of sample-steps saved over the run
    score: str = "loss"
    # optimisation
    optimizer: str = "sgd"
    batch_size: int = 128                 # per worker; the global batch is batch_size * num_workers
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"              # cosine over the real (pruned) steps, or constant
    warmup_epochs: float = 0.0
    eval_batch_size: int = 1000
    # workers and the data plane
    num_workers: int = 2                  # 0 = run the loop in the driver process (local mode)
    cpus_per_worker: float = 1.0
    worker_resources: dict = field(default_factory=dict)  # extra per-worker resources, e.g. {trainer: 1}
    use_gpu: bool = False
    torch_threads: int = 0                # 0 = the CPUs each worker holds
    observe_every: int = 32               # steps buffered before sending scores to the coordinator
    coordinator_timeout_s: float = 600.0
    coordinator_shards: int = 1           # actors holding the per-sample state, by id range
    shuffle_rows: int = 4096              # local shuffle buffer (rows) across blocks, seeded per epoch; 0: off
    prefetch_batches: int = 2
    max_failures: int = 0
    fail_at: Optional[dict] = None        # test hook: {epoch, step, rank, kind: worker|coordinator}
    audit: bool = False                   # write per-rank ids/weights per epoch (tests)
    # tracking
    tracking_uri: Optional[str] = None    # MLflow; default sqlite under output_dir; "none" disables
    experiment: str = "repb_ray"
    tags: dict = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                if key in MOVED_TO_TASK_ARGS:
                    raise ConfigError(f"config key {key!r} is now {MOVED_TO_TASK_ARGS[key]} (the task holds the data "
                                      "and the model), e.g. task: fashion_mnist, task_args: {train_subset: 20000}")
                raise ConfigError(f"unknown config key {key!r}{suggest(key, names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None) -> "Config":
        data = load_yaml_mapping(path, "config")
        over = parse_overrides(overrides or [])
        if "task" in over and over["task"] != data.get("task", "fashion_mnist") and "task_args" not in over:
            data = {**data, "task_args": {}}  # the file's task_args belong to the file's task
        data = apply_overrides(data, over)
        return cls.from_dict(data)  # an unnamed run gets runs.default_name(path, cfg) from the CLI

    def replace(self, **changes) -> "Config":
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- derived --------------------------------------------------------------------------------
    def policy_params(self) -> dict[str, Any]:
        budget = {"target_pruned": self.target_pruned, "num_epochs": self.epochs} if self.target_pruned is not None else {}
        if self.policy == "repb":
            return {"rho": self.rho, "window": self.window, "lwp": self.lwp, "resample": self.resample,
                    "ctr": self.ctr, "ctr_max": self.ctr_max, **budget}
        if self.policy == "infobatch":
            return {"prune_ratio": self.prune_ratio, "num_epochs": self.epochs, "delta": self.delta,
                    "anneal": self.anneal, **({"target_pruned": self.target_pruned} if budget else {})}
        if self.policy == "random":
            return {"prune_ratio": self.prune_ratio, **budget}
        if self.policy == "egreedy":
            return {"prune_ratio": self.prune_ratio, "epsilon": self.epsilon, "alpha": self.ema_alpha,
                    "select_every": self.select_every, **budget}
        if self.policy == "ucb":
            return {"prune_ratio": self.prune_ratio, "ucb_c": self.ucb_c, "alpha": self.ema_alpha,
                    "select_every": self.select_every, **budget}
        return {}

    @property
    def world_size(self) -> int:
        return max(1, self.num_workers)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_dir, self.name or "run")


def load_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, a YAML syntax error or a non-mapping is a ConfigError."""
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"{what} file {path!r} does not exist; the shipped ones are in jobs/configs/")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the "
                              "syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file must be a mapping of keys to values")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values parse as YAML (numbers, true/false, null, lists);
    `a.b=value` sets key b of the mapping a (e.g. task_args.train_subset=20000)."""
    import yaml
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}; e.g. --set rho=0.3")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}=...: the value {value!r} is not valid YAML; quote it") from None
        out[key.strip()] = parsed
    return out


def apply_overrides(data: dict, overrides: dict) -> dict:
    """Merge overrides into a config mapping; dotted keys go into nested mappings."""
    data = dict(data)
    for key, value in overrides.items():
        if "." in key:
            head, rest = key.split(".", 1)
            inner = data.get(head) or {}
            if not isinstance(inner, dict):
                raise ConfigError(f"--set {key}: {head} is not a mapping, got {head}={inner!r}")
            data[head] = apply_overrides(inner, {rest: value})
        else:
            data[key] = value
    return data


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {key}={value!r}"
                          f"{suggest(str(value), choices)}")


def _validate(c: Config) -> None:
    try:
        if not isinstance(c.task, str) or not c.task:
            raise ConfigError(f"task must be a built-in name or 'module:Class', got task={c.task!r}")
        if not isinstance(c.task_args, dict):
            raise ConfigError(f"task_args must be a mapping, got task_args={c.task_args!r}")
        _choice("policy", c.policy, POLICY_NAMES)
        _choice("score", c.score, SCORES)
        _choice("optimizer", c.optimizer, OPTIMIZERS)
        _choice("schedule", c.schedule, SCHEDULES)
        check_int("seed", c.seed, minimum=0)
        check_int("epochs", c.epochs, minimum=1)
        check_int("batch_size", c.batch_size, minimum=1)
        check_int("eval_batch_size", c.eval_batch_size, minimum=1)
        check_int("num_workers", c.num_workers, minimum=0)
        check_int("torch_threads", c.torch_threads, minimum=0)
        check_int("observe_every", c.observe_every, minimum=1)
        check_int("coordinator_shards", c.coordinator_shards, minimum=1)
        check_int("shuffle_rows", c.shuffle_rows, minimum=0)
        check_int("prefetch_batches", c.prefetch_batches, minimum=0)
        check_int("max_failures", c.max_failures, minimum=-1)
        check_int("select_every", c.select_every, minimum=1)
        check_float("rho", c.rho, lo=0.0, hi=1.0)
        check_int("window", c.window, minimum=1)
        check_float("prune_ratio", c.prune_ratio, lo=0.0, hi=1.0, hi_open=True)
        check_float("delta", c.delta, lo=0.0, hi=1.0)
        check_float("epsilon", c.epsilon, lo=0.0, hi=1.0)
        check_float("ucb_c", c.ucb_c, lo=0.0)
        check_float("ema_alpha", c.ema_alpha, lo=0.0, hi=1.0, lo_open=True)
        if c.target_pruned is not None:
            check_float("target_pruned", c.target_pruned, lo=0.0, hi=1.0, hi_open=True)
            if c.policy == "full":
                raise ConfigError("target_pruned does not apply to policy=full; drop it or pick another policy")
        if c.ctr_max is not None:
            check_float("ctr_max", c.ctr_max, lo=1.0)
        check_float("lr", c.lr, lo=0.0, lo_open=True)
        check_float("momentum", c.momentum, lo=0.0, hi=1.0, hi_open=True)
        check_float("weight_decay", c.weight_decay, lo=0.0)
        check_float("warmup_epochs", c.warmup_epochs, lo=0.0)
        check_float("cpus_per_worker", c.cpus_per_worker, lo=0.0, lo_open=True)
        check_float("coordinator_timeout_s", c.coordinator_timeout_s, lo=0.0, lo_open=True)
        for key in ("lwp", "resample", "ctr", "ctr_normalize", "use_gpu", "audit", "anneal"):
            check_bool(key, getattr(c, key))
        if c.name is not None and (not isinstance(c.name, str) or not c.name or "/" in c.name):
            raise ConfigError(f"name must be a non-empty string without '/', got name={c.name!r}")
        if not isinstance(c.tags, dict):
            raise ConfigError(f"tags must be a mapping, got tags={c.tags!r}")
        if not isinstance(c.worker_resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in c.worker_resources.items()):
            raise ConfigError(f"worker_resources must map resource names to amounts >= 0, got "
                              f"worker_resources={c.worker_resources!r}")
        if {"CPU", "GPU"} & set(c.worker_resources):
            raise ConfigError("worker_resources holds custom resources only; set CPUs with cpus_per_worker and GPUs "
                              "with use_gpu")
        if c.fail_at is not None:
            _check_fail_at(c.fail_at)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None


def _check_fail_at(f) -> None:
    if not isinstance(f, dict):
        raise ConfigError(f"fail_at must be a mapping like {{epoch: 2, step: 3, rank: 1}}, got {f!r}")
    allowed = ("epoch", "step", "rank", "kind")
    for key in f:
        if key not in allowed:
            raise ConfigError(f"unknown fail_at key {key!r}{suggest(key, allowed)}")
    check_int("fail_at.epoch", f.get("epoch"), minimum=1)
    check_int("fail_at.step", f.get("step", 0), minimum=0)
    check_int("fail_at.rank", f.get("rank", 0), minimum=0)
    _choice("fail_at.kind", f.get("kind", "worker"), FAIL_KINDS)
