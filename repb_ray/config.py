"""Config: the one frozen, validated dataclass behind the CLI, YAML files and Tune trials. No Ray, no
torch: it loads anywhere, and every value is checked before anything starts."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from repb_ray.core.checks import check_bool, check_float, check_int, suggest
from repb_ray.core.registry import POLICY_NAMES, policy_class
from repb_ray.credentials import check_no_secrets
from repb_ray.errors import ConfigError

SCORES = ("loss", "grad_norm", "last_layer_grad_norm")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_MODES = ("auto", "async", "sync")
LOG_MODELS = ("auto", "export", "weights", "none")
FAIL_KINDS = ("worker", "kill", "coordinator", "shard")  # raise in a worker, SIGKILL a worker / the front / a shard
MOVED_TO_TASK_ARGS = {"dataset": "task", "data_dir": "task_args.data_dir", "download": "task_args.download",
                      "train_subset": "task_args.train_subset", "test_subset": "task_args.test_subset",
                      "synthetic_size": "task_args.size", "model": "task_args.model", "augment": "task_args.augment"}
# policy parameters were flat config keys before policy_args; each names its new place for one release
MOVED_TO_POLICY_ARGS = ("rho", "window", "lwp", "resample", "ctr", "ctr_max", "prune_ratio", "delta", "anneal",
                        "epsilon", "ucb_c", "ema_alpha", "select_every")
# run names: folders under output_dir and the storage path; never a folder repb_ray itself uses there
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED_NAMES = ("ray_results", "mlartifacts", "mlruns", "mlflow.db", "tune", "trials", "coordinator")


def moved_key_hint(key: str) -> str | None:
    """The one-line hint for a config key that moved, or None."""
    if key in MOVED_TO_TASK_ARGS:
        return (f"config key {key!r} is now {MOVED_TO_TASK_ARGS[key]} (the task holds the data and the model), "
                "e.g. task: fashion_mnist, task_args: {train_subset: 20000}")
    if key in MOVED_TO_POLICY_ARGS:
        return (f"config key {key!r} is now policy_args.{key} (a policy's parameters live in policy_args and "
                f"are checked by the policy), e.g. --set policy_args.{key}=...")
    return None


def check_name(name, what: str = "name") -> str:
    """A run or sweep name: letters, digits and ._-, starting with a letter or digit, at most 128
    characters, not a folder repb_ray uses in the output directory."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{what} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                          f"got {what}={name!r}; e.g. {what}=my-run-1")
    if name in RESERVED_NAMES or name.endswith((".lock", ".tmp")):
        raise ConfigError(f"{what}={name!r} is a name repb_ray uses for its own files in the output directory; "
                          "pick another")
    return name


@dataclass(frozen=True)
class Config:
    """Everything a training run needs. `policy_params()` gives the core policy's arguments."""

    # run
    name: str | None = None            # run name; re-running with the same name resumes the run
    seed: int = 0
    epochs: int = 15
    output_dir: str = "runs"              # what a person reads (summary.json, plots, error.log, the SQLite MLflow store); may be driver-local
    storage_path: str | None = None    # where runs have their homes (shared on a cluster; path or URI); default output_dir/ray_results
    # the task: what is trained (built-in name or module:Class) and its arguments
    task: str = "fashion_mnist"
    task_args: dict = field(default_factory=dict)
    # the pruning policy (built-in name) and its arguments, checked by the policy class
    policy: str = "repb"
    policy_args: dict = field(default_factory=dict)
    target_pruned: float | None = None  # a pruning budget: fraction of sample-steps saved over the run
    score: str = "loss"                   # loss; grad_norm: the loss gradient's norm at the model's OUTPUT (an
                                          # EL2N-like proxy); last_layer_grad_norm: each sample's gradient norm
                                          # of the last nn.Linear's weight and bias (exact)
    ctr_normalize: bool = False           # normalise each batch's loss weights to mean 1
    # optimisation
    optimizer: str = "sgd"
    batch_size: int = 128                 # per worker and step; the global batch is batch_size * num_workers * grad_accum_steps
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"              # cosine over the real (pruned) steps, or constant
    warmup_epochs: float = 0.0
    eval_batch_size: int = 256             # per rank (on a CPU, batches of 1000 evaluate 1.7x slower than of 256)
    eval_mode: str = "auto"               # async: epoch E is evaluated while E+1 trains (once its first batch is in
                                          # hand; on a CPU at the lowest priority); sync: before it starts;
                                          # auto (the default): async, on every device
    eval_every: int = 1                   # evaluate the test set after every k-th epoch and after the last
    eval_cache_mb: int = 256              # each rank keeps its test batches (on its device) when every share fits; 0: read each time
    precision: str = "fp32"               # fp32 | bf16 | fp16 (autocast; fp16 with a grad scaler)
    grad_accum_steps: int = 1             # batches per optimizer step (a window counts optimizer steps)
    grad_clip: float | None = None     # clip the gradient norm to this value
    compile: bool = False                 # torch.compile the model
    channels_last: bool = False           # image models in channels-last memory format
    # workers and the data plane
    num_workers: int | list = 2           # 0 = run the loop in the driver process (local mode); [min, max]:
                                          # elastic, the run goes on with min..max workers as nodes come and go
    resize_check_s: float = 60.0          # elastic: how often Ray checks whether more workers fit (then the run
                                          # restarts on them from its last checkpoint)
    cpus_per_worker: float = 1.0
    worker_resources: dict = field(default_factory=dict)  # extra per-worker resources, e.g. {trainer: 1}
    use_gpu: bool = False
    torch_threads: int = 0                # 0 = the CPUs each worker holds
    observe_every: int = 32               # steps buffered before sending scores to the coordinator
    coordinator_timeout_s: float = 600.0
    coordinator_shards: int = 1           # actors holding the per-sample state, by id range
    shuffle_rows: int = 4096              # local shuffle buffer (rows) across blocks, seeded per epoch; it fills
                                          # while it serves (an epoch's first batch waits for one block); 0: off
    prefetch_batches: int = 2             # test batches fetched ahead (train rows come in whole blocks, each taken
                                          # as Ray Data produces it)
    max_failures: int = 3                 # worker-group restarts after an error (a preemption does not count;
                                          # the same error at the same step twice is not retried); -1: no limit
    checkpoint_every_steps: int = 0       # also checkpoint every N optimizer steps within an epoch; 0: at epoch ends
    preemption_check_steps: int = 32      # ask Ray every N steps whether a node is about to be preempted, and
                                          # checkpoint at once if so; 0: never
    fail_at: dict | None = None        # test hook: {epoch, step, rank, kind: worker|kill|coordinator|shard, every_attempt}
    audit: bool = False                   # write per-rank ids/weights per epoch (tests)
    # tracking
    tracking_uri: str | None = None    # MLflow; default sqlite under output_dir; "none" disables
    experiment: str = "repb_ray"
    tags: dict = field(default_factory=dict)
    log_model: str = "auto"               # the final model in MLflow: export (pt2 with its signature, when the task
                                          # gives input_example; about 9 s for the small CNN on a CPU), weights
                                          # (model_state_dict.pt), none; auto: export for a run, weights for a
                                          # sweep's trials (their checkpoints hold the weights too)
    system_metrics: bool = True           # CPU, memory, disk, network (and GPU) of the driver's node in the run

    def __post_init__(self):
        # credentials never stay in a config: a tracking URI's user:password goes to MLflow's own variables
        # (repb_ray/credentials.py); `~` in a path is expanded, never a folder named `~`
        from repb_ray.credentials import take_tracking_credentials
        object.__setattr__(self, "tracking_uri", take_tracking_credentials(self.tracking_uri))
        for key in ("output_dir", "storage_path"):
            value = getattr(self, key)
            if isinstance(value, str) and value.startswith("~") and "://" not in value:
                object.__setattr__(self, key, os.path.expanduser(value))
        _validate(self)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(moved_key_hint(key) or f"unknown config key {key!r}{suggest(key, names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None, values: dict | None = None) -> Config:
        """The config file, with `--set key=value` overrides (values parsed as YAML) and `values` set
        as given (strings stay strings: the CLI's --output-dir and --tracking-uri)."""
        data = load_yaml_mapping(path, "config")
        over = {**parse_overrides(overrides or []), **(values or {})}
        return cls.from_dict(apply_overrides(data, over))

    def replace(self, **changes) -> Config:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- derived --------------------------------------------------------------------------------
    def policy_params(self) -> dict[str, Any]:
        """The policy's parameters for this run: policy_args, plus the run length and the budget
        where the policy takes them (validated by the policy class)."""
        return policy_class(self.policy).run_params(self.policy_args, epochs=self.epochs,
                                                    target_pruned=self.target_pruned)

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, (list, tuple))

    @property
    def min_workers(self) -> int:
        return int(self.num_workers[0]) if self.elastic else self.num_workers

    @property
    def world_size(self) -> int:
        """The most workers the run trains on (the plan of a fresh start is trimmed for it; a run that
        starts or goes on with fewer re-trims it)."""
        return max(1, int(self.num_workers[1]) if self.elastic else self.num_workers)

    def scaling_workers(self) -> int | tuple[int, int]:
        """Ray Train's ScalingConfig(num_workers=...): a number, or (min, max) for elastic training."""
        return (self.min_workers, self.world_size) if self.elastic else self.num_workers

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_dir, self.name or "run")


def _unique_key_loader():
    """yaml's SafeLoader, refusing a key given twice in one mapping (plain YAML keeps the last, silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)
    return UniqueKeyLoader


SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # package data


def shipped_configs() -> list[str]:
    """The names of the configs shipped with the package (`--config NAME`)."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(SHIPPED_CONFIGS) if f.endswith(".yaml"))


def resolve_config(path: str, what: str = "config") -> str:
    """A YAML file's path: `path` itself when it is a file, else the shipped config of that name
    (`smoke` or `smoke.yaml`); anything else is a ConfigError listing the shipped names."""
    if os.path.isfile(path):
        return path
    name = path[: -len(".yaml")] if path.endswith(".yaml") else path
    if "/" not in name and os.sep not in name and name in shipped_configs():
        return os.path.join(SHIPPED_CONFIGS, name + ".yaml")
    raise ConfigError(f"{what} file {path!r} does not exist; pass a YAML file or the name of a shipped one: "
                      f"{', '.join(shipped_configs())}")


def load_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The mapping in a YAML file (or a shipped config, by name); a missing file, a YAML syntax error or a
    non-mapping is a ConfigError."""
    path = resolve_config(path, what)
    import yaml
    with open(path) as fh:
        try:
            data = yaml.load(fh, Loader=_unique_key_loader()) or {}
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
            raise ConfigError(f"--set expects key=value, got {item!r}; e.g. --set policy_args.rho=0.3")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}=...: the value {value!r} is not valid YAML; quote it") from None
        out[key.strip()] = parsed
    return out


# a mapping key that belongs to another key: changing the owner without the mapping resets it
DEPENDENT_MAPPINGS = {"task": "task_args", "policy": "policy_args"}


def apply_overrides(data: dict, overrides: dict) -> dict:
    """Merge overrides into a config mapping; dotted keys go into nested mappings. Changing `task`
    (or `policy`) without giving the whole `task_args` (`policy_args`) starts the arguments afresh
    (dotted keys then fill the new mapping): the old ones belonged to the old task (policy)."""
    data = dict(data)
    for owner, args in DEPENDENT_MAPPINGS.items():
        if owner in overrides and overrides[owner] != data.get(owner, getattr(Config, owner)) and args not in overrides:
            data[args] = {}
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
        for key in ("task_args", "policy_args", "tags"):
            if not isinstance(getattr(c, key), dict):
                raise ConfigError(f"{key} must be a mapping, got {key}={getattr(c, key)!r}")
            check_no_secrets(getattr(c, key), key)  # before anything else reads them
        _choice("policy", c.policy, POLICY_NAMES)
        _choice("score", c.score, SCORES)
        _choice("optimizer", c.optimizer, OPTIMIZERS)
        _choice("schedule", c.schedule, SCHEDULES)
        _choice("precision", c.precision, PRECISIONS)
        _choice("eval_mode", c.eval_mode, EVAL_MODES)
        _choice("log_model", c.log_model, LOG_MODELS)
        check_int("seed", c.seed, minimum=0)
        check_int("epochs", c.epochs, minimum=1)
        check_int("batch_size", c.batch_size, minimum=1)
        check_int("eval_batch_size", c.eval_batch_size, minimum=1)
        check_int("eval_cache_mb", c.eval_cache_mb, minimum=0)
        check_int("eval_every", c.eval_every, minimum=1)
        check_int("grad_accum_steps", c.grad_accum_steps, minimum=1)
        if isinstance(c.num_workers, (list, tuple)):
            if len(c.num_workers) != 2:
                raise ConfigError(f"num_workers must be a number or [min, max], got num_workers={c.num_workers!r}")
            lo = check_int("num_workers[0]", c.num_workers[0], minimum=1)
            hi = check_int("num_workers[1]", c.num_workers[1], minimum=1)
            if lo > hi:
                raise ConfigError(f"num_workers=[min, max] needs min <= max, got num_workers={list(c.num_workers)!r}")
        else:
            check_int("num_workers", c.num_workers, minimum=0)
        check_float("resize_check_s", c.resize_check_s, lo=0.0)
        check_int("torch_threads", c.torch_threads, minimum=0)
        check_int("observe_every", c.observe_every, minimum=1)
        check_int("coordinator_shards", c.coordinator_shards, minimum=1)
        check_int("shuffle_rows", c.shuffle_rows, minimum=0)
        check_int("prefetch_batches", c.prefetch_batches, minimum=0)
        check_int("max_failures", c.max_failures, minimum=-1)
        check_int("checkpoint_every_steps", c.checkpoint_every_steps, minimum=0)
        check_int("preemption_check_steps", c.preemption_check_steps, minimum=0)
        if c.target_pruned is not None:
            check_float("target_pruned", c.target_pruned, lo=0.0, hi=1.0, hi_open=True)
        c.policy_params()  # the policy checks its own arguments
        check_float("lr", c.lr, lo=0.0, lo_open=True)
        check_float("momentum", c.momentum, lo=0.0, hi=1.0, hi_open=True)
        check_float("weight_decay", c.weight_decay, lo=0.0)
        check_float("warmup_epochs", c.warmup_epochs, lo=0.0)
        if c.grad_clip is not None:
            check_float("grad_clip", c.grad_clip, lo=0.0, lo_open=True)
        check_float("cpus_per_worker", c.cpus_per_worker, lo=0.0, lo_open=True)
        check_float("coordinator_timeout_s", c.coordinator_timeout_s, lo=0.0, lo_open=True)
        for key in ("ctr_normalize", "use_gpu", "audit", "compile", "channels_last", "system_metrics"):
            check_bool(key, getattr(c, key))
        if c.name is not None:
            check_name(c.name)
        _check_output_dir(c.output_dir)
        if c.storage_path is not None and (not isinstance(c.storage_path, str) or not c.storage_path):
            raise ConfigError(f"storage_path must be a path or a URI (s3://...), got storage_path={c.storage_path!r}")
        if c.storage_path is not None:
            from repb_ray.storage import check_location
            check_location(c.storage_path)

        if c.tracking_uri is not None and not isinstance(c.tracking_uri, str):
            raise ConfigError(f"tracking_uri must be a string (a URI, a path, or none), got {type(c.tracking_uri).__name__}")
        if not isinstance(c.experiment, str) or not c.experiment:
            raise ConfigError(f"experiment must be a non-empty string, got experiment={c.experiment!r}")
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


def _check_output_dir(path) -> None:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"output_dir must be a folder path, got output_dir={path!r}")
    if "://" in path:
        raise ConfigError(f"output_dir={path!r} is a URI, but outputs (summaries, plots, the MLflow store) are "
                          "written as local files; give a folder (a mounted volume on a cluster) and put checkpoints "
                          "on the URI with --set storage_path=...")


def _check_fail_at(f) -> None:
    if not isinstance(f, dict):
        raise ConfigError(f"fail_at must be a mapping like {{epoch: 2, step: 3, rank: 1}}, got {f!r}")
    allowed = ("epoch", "step", "rank", "kind", "every_attempt")
    for key in f:
        if key not in allowed:
            raise ConfigError(f"unknown fail_at key {key!r}{suggest(key, allowed)}")
    check_int("fail_at.epoch", f.get("epoch"), minimum=1)
    check_int("fail_at.step", f.get("step", 0), minimum=0)
    check_int("fail_at.rank", f.get("rank", 0), minimum=0)
    _choice("fail_at.kind", f.get("kind", "worker"), FAIL_KINDS)
    check_bool("fail_at.every_attempt", f.get("every_attempt", False))
