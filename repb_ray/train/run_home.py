"""Run identities and ownership, in the driver. A run's one home is STORAGE/NAME (a path or a URI):
its record (config and a fingerprint of what decides the training trajectory), its owner
(train/ownership.py), Ray Train's checkpoints and the coordinator's states. OUTPUT/NAME holds only
what a person reads (summary, plots, error.log) and may be local to the driver. Same name and
fingerprint: resume. Another fingerprint: refused before anything starts, unless --resume or
--overwrite is asked for. Nothing is deleted without proof: the home is cleared only when its
record names this run (--overwrite) or this invocation made it (a failed first attempt), and a
listing that fails stops the cleanup instead of reading as "empty"."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

from repb_ray import storage
from repb_ray.config import NAME_PATTERN, Config
from repb_ray.errors import ConfigError, RunError
from repb_ray.layout import (
    COORDINATOR_DIR,
    OUTPUTS,
    OWNER_DIR,
    RAY_TRAIN_FILES,
    RECORD_FILE,
    SWEEP_FILE,
    SWEEP_RECORD,
    RunLayout,
    is_checkpoint,
)
from repb_ray.redact import redact
from repb_ray.train.ownership import Ownership

# keys that do not change what is trained (where outputs go, tracking, timeouts, test hooks)
NOT_IDENTITY = {"name", "output_dir", "storage_path", "tracking_uri", "experiment", "tags", "max_failures",
                "fail_at", "audit", "coordinator_timeout_s", "observe_every", "prefetch_batches", "eval_batch_size",
                "worker_resources", "system_metrics", "checkpoint_every_steps", "preemption_check_steps", "eval_mode",
                "resize_check_s"}
MARKER_PREFIX = ".injected_"         # fault-injection markers of the tests (fail_at)
FINISHED = "finished_at"             # in the record once summary.json and tracking are complete


def identity(cfg: Config) -> dict:
    """What decides the training (secrets are references only: config.py refuses literal ones)."""
    return redact({k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY})


def fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()


def default_name(config_path: str | None, cfg: Config) -> str:
    """<config file stem>-<8 hex of the fingerprint>: the same config resumes, another one gets its
    own run; without a file, a timestamp and a random suffix."""
    if config_path:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        name = f"{stem}-{fingerprint(cfg)[:8]}"
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"the run's default name comes from the config file's name, and {config_path!r} does not "
                              "make a valid one (letters, digits, '.', '_' or '-', starting with a letter or digit); "
                              "name the run yourself: --set name=my-run")
        return name
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def storage_root(cfg: Config) -> str:
    """Where runs keep their homes: storage_path or OUTPUT/ray_results."""
    root = cfg.storage_path or os.path.join(cfg.output_dir, "ray_results")
    return root if storage.is_uri(root) else os.path.abspath(root)


def home_of(cfg: Config) -> str:
    """The run's one home: STORAGE/NAME."""
    return storage.join(storage_root(cfg), cfg.name)


def layout_of(cfg: Config) -> RunLayout:
    """The places of run `cfg.name`: its home and its output folder."""
    return RunLayout(home_of(cfg), cfg.run_dir)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(old: dict, new: dict) -> list[str]:
    """The changes between two identities, key by key (nested keys dotted: policy_args.rho)."""
    old, new = _flat(old), _flat(new)
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def read_record(location: str) -> dict | None:
    """The run record at `location`, None if there is none; anything else there is an error."""
    if not storage.exists(location):
        return None
    try:
        data = storage.read_json(location)
    except (OSError, ValueError) as exc:
        raise RunError(f"{storage.display(location)} is not a readable run record ({type(exc).__name__}); give this "
                       "run another name (--set name=...)") from None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
        raise RunError(f"{storage.display(location)} is not a repb_ray run record; give this run another name "
                       "(--set name=...)")
    return data


def _remove_command(location: str) -> str:
    return f"rm -r {location}" if not storage.is_uri(location) else f"delete {storage.display(location)} with your storage's tools"


# what a resumed run cannot change: its state was built for them (the optimizer's state, the shards' id
# ranges, the policy and its sample set, the random streams)
NOT_RESUMABLE = ("task", "task_args", "policy", "optimizer", "coordinator_shards", "seed", "score")


def _check_resumable(cfg: Config, old: dict, new: dict) -> None:
    """--resume with a change the run cannot take is refused here, before anything starts."""
    fixed = [k for k in NOT_RESUMABLE if old.get(k) != new.get(k)]
    if old.get("epochs") != new.get("epochs") and cfg.policy_params().get("num_epochs") is not None:
        fixed.append("epochs")  # a policy that plans the whole run (a budget, InfoBatch's annealing)
    if fixed:
        changes = [c for c in _diff({k: old.get(k) for k in fixed}, {k: new.get(k) for k in fixed})]
        raise ConfigError(f"--resume cannot change {', '.join(fixed)} of run {cfg.name!r} ({'; '.join(changes[:3])}): "
                          "its saved state was built for them; start it over with --overwrite, or give this one its own "
                          "name (--set name=...)")


def run_entry(entry: str) -> bool:
    """Whether `entry` of a home is one a run writes there."""
    return (entry in (RECORD_FILE, OWNER_DIR, COORDINATOR_DIR, *RAY_TRAIN_FILES) or is_checkpoint(entry)
            or entry.startswith(".tmp_") or entry.endswith(".tmp"))


def clear_home(home: str, entries: dict) -> None:
    """Remove a run's entries of its home, the owner's last (a failure stops at the first error)."""
    for entry in sorted(entries, key=lambda e: e == OWNER_DIR):
        storage.remove(storage.join(home, entry))


@dataclass
class RunClaim:
    """This invocation's hold on a run: its home and owner, whether it resumes, and what it created."""

    cfg: Config
    home: str
    state: str                      # "new" or "resume"
    owner: Ownership
    record: dict
    existed: set = field(default_factory=set)   # entries of OUTPUT/NAME before this invocation
    made_run_dir: bool = False
    made_home: bool = False         # the home was empty and this invocation took its first generation

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    def has_checkpoint(self) -> bool:
        """Whether Ray Train saved a checkpoint in the home (a listing that fails raises)."""
        return any(is_checkpoint(e) for e in storage.list_entries(self.home))

    def save_record(self, **fields) -> None:
        self.owner.check()
        self.record.update(fields)
        storage.write_json(storage.join(self.home, RECORD_FILE), self.record)

    def finish(self) -> None:
        """Record that the run ended: its summary and tracking are complete (finished_summary reads this)."""
        self.save_record(**{FINISHED: time.time()})

    def abandon(self) -> None:
        """A run that failed before its first checkpoint: remove what this invocation created (its
        outputs; its home, when it made it and still owns it), nothing else. Any doubt keeps files."""
        if os.path.isdir(self.run_dir):
            for entry in os.listdir(self.run_dir):
                if entry not in self.existed and (entry in OUTPUTS or entry.startswith(MARKER_PREFIX)):
                    storage.remove(os.path.join(self.run_dir, entry))
        if not self.made_home or self.owner.lost:
            return
        self.owner.check()
        entries = storage.list_entries(self.home)
        if all(run_entry(e) for e in entries):
            self.owner.release()
            clear_home(self.home, entries)
            storage.remove(self.home)

    def release(self) -> None:
        """Give the ownership back; a run folder this invocation made and left empty goes too."""
        self.owner.release()
        if self.made_run_dir:
            try:
                os.rmdir(self.run_dir)
            except OSError:
                pass


def finished_summary(cfg: Config) -> dict | None:
    """The summary of run `cfg.name` when it already ended with this config (its record says so and
    its summary.json is there), else None. Reads only; takes no ownership."""
    places = layout_of(cfg)
    record, path = read_record(places.record), places.summary
    if record is None or record["fingerprint"] != fingerprint(cfg) or FINISHED not in record or not os.path.exists(path):
        return None
    return storage.read_json(path)


def check_home(home: str, name: str, what: str = "run") -> dict:
    """The entries of `home`, refused when they are not this kind of repb_ray home (another run's
    files, a sweep, a folder repb_ray did not make). A failed listing raises."""
    entries = storage.list_entries(home)
    other_record = SWEEP_RECORD if what == "run" else RECORD_FILE
    own_record = RECORD_FILE if what == "run" else SWEEP_RECORD
    if other_record in entries:
        kind = "a sweep" if what == "run" else "a training run"
        raise ConfigError(f"{storage.display(home)} is the home of {kind}; give this {what} another name (--set "
                          f"{'name' if what == 'run' else 'sweep.name'}=...)")
    if entries and own_record not in entries and OWNER_DIR not in entries:
        shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
        raise RunError(f"{storage.display(home)} holds files that are not a repb_ray {what} ({shown}), so repb_ray "
                       f"will neither use nor delete them; give this {what} another name (--set "
                       f"{'name' if what == 'run' else 'sweep.name'}=...), or remove them yourself ({_remove_command(home)})")
    return entries


def claim(cfg: Config, *, resume: bool = False, overwrite: bool = False, lease_wait_s: float = 0.0) -> RunClaim:
    """Take the run `cfg.name` for this invocation, before anything starts: its home checked, its
    ownership taken, its identity compared (and, with overwrite, the run's own entries removed
    first). Raises a ConfigError naming the differences when the home holds another config and
    neither resume nor overwrite was asked for, a RunError when another driver owns the run (still,
    after lease_wait_s)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pick one")
    run_dir, home = cfg.run_dir, home_of(cfg)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} exists and is not a folder; give this run another name (--set name=...)")
    if os.path.exists(os.path.join(run_dir, SWEEP_FILE)):
        raise ConfigError(f"{run_dir} is the folder of a sweep; give this run another name (--set name=...)")
    entries = check_home(home, cfg.name)
    owner = Ownership(home, cfg.name).acquire(lease_wait_s)
    made_run_dir = False
    try:
        existed = set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()
        made_run_dir = not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        return _claim_owned(cfg, owner, home, resume, overwrite, existed, made_run_dir, made_home=not entries)
    except BaseException:
        owner.release()
        if made_run_dir:
            try:
                os.rmdir(run_dir)
            except OSError:
                pass
        raise


def _claim_owned(cfg: Config, owner: Ownership, home: str, resume: bool, overwrite: bool, existed: set,
                 made_run_dir: bool, made_home: bool) -> RunClaim:
    run_dir, record_path = cfg.run_dir, RunLayout(home, cfg.run_dir).record
    stored = read_record(record_path)
    if stored is not None and stored.get("name") not in (None, cfg.name):
        raise RunError(f"{storage.display(record_path)} records the run {stored.get('name')!r}, not {cfg.name!r}; give "
                       "this run another name")
    entries = storage.list_entries(home)
    if stored is None and any(is_checkpoint(e) for e in entries):
        raise RunError(f"{storage.display(home)} holds checkpoints but no repb_ray run record, so repb_ray cannot tell "
                       f"whose they are; give this run another name (--set name=...), or remove them yourself "
                       f"({_remove_command(home)})")
    if overwrite:
        strange = sorted(e for e in entries if not run_entry(e))
        if strange:
            raise RunError(f"--overwrite: {storage.display(home)} holds entries a run does not write ({', '.join(strange[:4])}); "
                           f"repb_ray deletes only what its runs wrote: remove them yourself ({_remove_command(home)}) "
                           "or give this run another name")
        owner.check()
        clear_home(home, {e: d for e, d in entries.items() if e != OWNER_DIR})
        for entry in os.listdir(run_dir):
            if entry in OUTPUTS or entry.startswith(MARKER_PREFIX):
                storage.remove(os.path.join(run_dir, entry))
        existed = {e for e in existed if e not in OUTPUTS and not e.startswith(MARKER_PREFIX)}
        stored = None
    fp, ident = fingerprint(cfg), identity(cfg)
    if resume and stored is None:
        raise ConfigError(f"--resume: there is no run {cfg.name!r} in {storage.display(storage_root(cfg))} to resume")
    mismatched = stored is not None and stored["fingerprint"] != fp
    if mismatched and not resume:
        changes = _diff(stored.get("identity", {}), ident)
        raise ConfigError(f"run {cfg.name!r} in {storage.display(storage_root(cfg))} was started with another config "
                          f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}); give this one its own "
                          "name (--set name=...), continue that run with --resume, or start it over with --overwrite")
    if mismatched:
        _check_resumable(cfg, stored.get("identity", {}), ident)
    record = dict(stored or {})
    if mismatched:
        record.setdefault("resumed_with", []).append({"at": time.time(),
                                                      "changes": _diff(stored.get("identity", {}), ident)})
    record.pop(FINISHED, None)  # a claimed run is running until this invocation finishes it
    record.update(name=cfg.name, fingerprint=fp, identity=ident, config=redact(cfg.to_dict()),
                  created=record.get("created", time.time()), owner_generation=owner.generation)
    claimed = RunClaim(cfg, home, "resume" if stored is not None else "new", owner, record, existed, made_run_dir,
                       made_home=made_home)
    claimed.save_record()
    return claimed
