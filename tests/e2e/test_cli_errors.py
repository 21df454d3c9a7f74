"""Every bad input is one line on stderr and exit code 2, with no traceback and nothing half-written:
config, YAML, task contract, data, run identity, tracking, sweeps, prepare, and errors raised
inside a Ray worker (then with the rank and where the full log is)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from repb_ray.cli import main as cli_main

pytestmark = [pytest.mark.e2e]
SMOKE = os.path.join(ROOT, "jobs", "configs", "smoke.yaml")
SWEEP = os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml")

BAD_TASKS = '''
import numpy as np
import torch.nn as nn
import torch.nn.functional as F
from repb_ray import Task
from repb_ray.data import from_numpy
import ray.data


class _Base(Task):
    def __init__(self, n=64):
        self.n = n

    def train_dataset(self):
        x = np.random.default_rng(0).normal(size=(self.n, 4)).astype(np.float32)
        return from_numpy({"x": x, "y": (x[:, 0] > 0).astype(np.int64)})

    def model(self):
        return nn.Linear(4, 2)

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")


class NoLoss(Task):
    def train_dataset(self):
        return None

    def model(self):
        return nn.Linear(4, 2)


class NoIds(_Base):
    def train_dataset(self):
        return ray.data.from_items([{"x": [0.0] * 4, "y": 0}] * 8)


class GappyIds(_Base):
    def train_dataset(self):
        return ray.data.from_items([{"id": 2 * i, "x": [0.0] * 4, "y": 0} for i in range(8)])


class RepeatedIds(_Base):
    def train_dataset(self):
        return ray.data.from_items([{"id": i % 4, "x": [0.0] * 4, "y": 0} for i in range(8)])


class WideLoss(_Base):
    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")[:, None].expand(-1, 3)


class ReducedLoss(_Base):
    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"])


class NanLoss(_Base):
    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none") * float("nan")


class BrokenInit(_Base):
    def __init__(self, n=64):
        raise RuntimeError("cannot open the bucket")
'''


@pytest.fixture(scope="module")
def bad_tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_tasks")
    (d / "bad_tasks.py").write_text(BAD_TASKS)
    (d / "broken.yaml").write_text("rho: [0.5\nwindow: 1\n")
    (d / "broken_sweep.yaml").write_text("base: {task: synthetic\n")
    (d / "twice.yaml").write_text("task: synthetic\nepochs: 2\nname: twice\nepochs: 3\n")
    (d / "my config.yaml").write_text("task: synthetic\nepochs: 2\n")
    return d


def _train(*extra, config=SMOKE):
    return ["train", "--config", config, *extra]


# (id, argv (or a function of the fixtures' dir), part of the message, needs Ray)
CASES = [
    ("unknown-key", _train("--set", "epoch=3"), "unknown config key 'epoch' (did you mean 'epochs'?)", False),
    ("moved-policy-key", _train("--set", "rho=0.3"), "config key 'rho' is now policy_args.rho", False),
    ("policy-arg", _train("--set", "policy_args.rh=0.3"), "unknown parameter 'rh' for policy 'repb' (did you mean 'rho'?)",
     False),
    ("rho-range", _train("--set", "policy_args.rho=1.5"), "rho must be in [0, 1], got rho=1.5", False),
    ("policy-typo", _train("--set", "policy=infobach"), "did you mean 'infobatch'?", False),
    ("epochs-zero", _train("--set", "epochs=0"), "epochs must be >= 1, got epochs=0", False),
    ("lr-zero", _train("--set", "lr=0"), "lr must be in (0, inf), got lr=0", False),
    ("ctr-max", _train("--set", "policy_args.ctr_max=0.5"), "ctr_max must be in [1, inf), got ctr_max=0.5", False),
    ("optimizer", _train("--set", "optimizer=adam"), "did you mean 'adamw'?", False),
    ("moved-key", _train("--set", "dataset=cifar10"), "config key 'dataset' is now task", False),
    ("set-no-equals", _train("--set", "rho"), "--set expects key=value", False),
    ("set-bad-yaml", _train("--set", "tags={a: [1"), "is not valid YAML; quote it", False),
    ("missing-file", ["train", "--config", "nope.yaml"], "config file 'nope.yaml' does not exist", False),
    ("yaml-syntax", lambda d: _train(config=str(d / "broken.yaml")), "not valid YAML", False),
    ("name-slash", _train("--set", "name=a/b"), "name must be 1-128 letters, digits", False),
    ("name-dot", _train("--set", "name=."), "name must be 1-128 letters, digits", False),
    ("name-dotdot", _train("--set", "name=.."), "name must be 1-128 letters, digits", False),
    ("name-reserved", _train("--set", "name=ray_results"), "name='ray_results' is a name repb_ray uses", False),
    ("fail-at-key", _train("--set", "fail_at={epoch: 1, stp: 2}"), "unknown fail_at key 'stp'", False),
    ("worker-resources", _train("--set", "worker_resources={CPU: 1}"), "worker_resources holds custom resources", False),
    ("budget-full", _train("--set", "policy=full", "--set", "target_pruned=0.5"), "does not apply to policy=full", False),
    ("precision", _train("--set", "precision=fp8"), "precision must be one of fp32, bf16, fp16", False),
    ("budget-range", _train("--set", "target_pruned=1.0"), "target_pruned must be in [0, 1)", False),
    ("resume-and-overwrite", _train("--resume", "--overwrite"), "--resume and --overwrite exclude each other", False),
    ("task-module", _train("--set", "task=nosuch_module:Task"), "module 'nosuch_module' not found", False),
    ("task-class", _train("--set", "task=repb_ray.tasks.synthetic:Nope"), "has no class 'Nope'", False),
    ("task-not-a-task", _train("--set", "task=os:getcwd"), "is not a subclass of repb_ray.Task", False),
    ("task-name", _train("--set", "task=fashion"), "did you mean 'fashion_mnist'?", False),
    ("task-args", _train("--set", "task_args.sizes=3"), "task_args ['size', 'sizes'] do not fit Synthetic", False),
    ("task-arg-value", _train("--set", "task_args.size=1"), "task_args.size must be an integer >= 2", False),
    ("task-data-dir", _train("--set", "task=fashion_mnist", "--set", "task_args={data_dir: /no/such/dir}"),
     "task_args.data_dir='/no/such/dir' does not exist", False),
    ("task-missing-hook", _train("--set", "task=bad_tasks:NoLoss"), "does not define the hook loss", False),
    ("task-init", _train("--set", "task=bad_tasks:BrokenInit"), "__init__ failed: RuntimeError: cannot open the bucket", False),
    ("resume-nothing", _train("--resume", "--set", "name=never-ran"), "there is no run 'never-ran'", False),
    ("too-many-workers", _train("--set", "task_args.size=2", "--set", "num_workers=3"),
     "num_workers=3 is larger than the 2 training samples", True),
    ("no-id-column", _train("--set", "task=bad_tasks:NoIds"), "has no 'id' column", True),
    ("gappy-ids", _train("--set", "task=bad_tasks:GappyIds"), "are not 0..7", True),
    ("repeated-ids", _train("--set", "task=bad_tasks:RepeatedIds"), "appears more than once", True),
    ("tracking-uri", _train("--set", "tracking_uri=sqlite:////no/such/dir/mlflow.db"),
     "tracking_uri='sqlite:////no/such/dir/mlflow.db' is not usable", True),
    ("loss-reduced", _train("--set", "task=bad_tasks:ReducedLoss", "--set", "num_workers=0"),
     "the loss is already reduced; build it with reduction='none'", True),
    ("loss-nan", _train("--set", "task=bad_tasks:NanLoss", "--set", "num_workers=0"), "must be finite", True),
    ("sweep-key", ["sweep", "--config", SWEEP, "--set", "sweep.serach={}"], "unknown sweep key 'serach'", False),
    ("sweep-search", ["sweep", "--config", SWEEP, "--set", "sweep.search={rhoo: {grid: [1]}}"],
     "search key 'rhoo' is not a config key", False),
    ("sweep-local-mode", ["sweep", "--config", SWEEP, "--set", "num_workers=0"], "local mode", False),
    ("sweep-yaml", lambda d: ["sweep", "--config", str(d / "broken_sweep.yaml")], "not valid YAML", False),
    ("prepare-source", ["prepare", "/no/such/files", "--out", "/tmp/x-never"], "'/no/such/files' does not exist", False),
    ("prepare-rows", ["prepare", "synthetic", "--out", "/tmp/x-never", "--rows-per-file", "0"],
     "rows_per_file must be an integer >= 1", False),
    ("prepare-not-empty", lambda d: ["prepare", "synthetic", "--out", str(d)], "is not an empty folder", False),
    ("yaml-key-twice", lambda d: _train(config=str(d / "twice.yaml")), "key 'epochs' is given twice (lines 2 and 4)",
     False),
    ("default-name-from-file", lambda d: ["train", "--config", str(d / "my config.yaml")],
     "does not make a valid one", False),
    ("task-file-path", _train("--set", "task=./my_task.py:MyTask"), "name the module as Python imports it, from the "
     "folder that holds it: task=my_task:MyTask", False),
    ("secret-in-task-args", _train("--set", "task_args.hf_token=hf_abcdef"), "task_args.hf_token looks like a secret",
     False),
    ("secret-in-tags", _train("--set", "tags.api_key=k-123456"), "tags.api_key looks like a secret", False),
    ("storage-credentials", _train("--set", "storage_path=s3://AKIA:se@cret@bkt/runs"),
     "storage_path carries credentials in its URI", False),
    ("sweep-owned-key", ["sweep", "--config", SWEEP, "--set", "sweep.search={storage_path: {grid: [a, b]}}"],
     "search key 'storage_path' cannot vary between trials", False),
    ("sweep-name-key", ["sweep", "--config", SWEEP, "--set", "sweep.grids=[{name: [a, b]}]"],
     "grid key 'name' cannot vary between trials", False),
    ("sweep-local-mode-baseline", ["sweep", "--config", SWEEP, "--set", "sweep.baselines=[{policy: full, num_workers: 0}]"],
     "local mode", False),
    ("shards-over-samples", _train("--set", "task_args.size=4", "--set", "coordinator_shards=8"),
     "coordinator_shards=8 is more than the 4 training samples", True),
    ("relative-sqlite-on-cluster", _train("--set", "tracking_uri=sqlite:///mlflow.db"),
     "is a relative SQLite path, and this run is on a Ray cluster", True),
]


def _cli_process(argv, cwd, ray_address):
    """The real command in its own process, connected to the test session's cluster: what a user's
    terminal shows (the task module reaches the workers through the runtime environment)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RAY_ADDRESS"] = ray_address
    p = subprocess.run([sys.executable, "-m", "repb_ray.cli", *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    return p.returncode, p.stderr


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(case, bad_tasks, tmp_path, capsys, monkeypatch, request):
    name, argv, message, needs_ray = case
    monkeypatch.chdir(bad_tasks)  # the bad tasks are found from the current directory, as `python -m` would
    argv = argv(bad_tasks) if callable(argv) else list(argv)
    if argv[0] in ("train", "sweep"):
        argv += ["--output-dir", str(tmp_path / "out")]
    if needs_ray:
        session = request.getfixturevalue("ray_session")
        code, stderr = _cli_process(argv, str(bad_tasks), session.get_runtime_context().gcs_address)
    else:
        code = cli_main(argv)
        stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("repb-ray: error: "), err
    assert message in err[0], err[0]
    assert "Traceback" not in err[0]
    out = tmp_path / "out"
    runs = [d for d in os.listdir(out)] if out.is_dir() else []
    for d in runs:  # nothing resumable or half-written: at most an error.log, and no run left RUNNING
        if (out / d).is_dir() and d not in ("ray_results", "mlartifacts"):
            assert sorted(os.listdir(out / d)) in ([], ["error.log"]), (d, os.listdir(out / d))
    if (out / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
        for exp in client.search_experiments():
            assert all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))


@pytest.mark.ray
@pytest.mark.slow
def test_loss_of_the_wrong_shape_in_a_worker_names_the_rank_and_the_log(bad_tasks, ray_session, tmp_path):
    code, stderr = _cli_process(_train("--set", "task=bad_tasks:WideLoss", "--set", "num_workers=1", "--set", "name=wide",
                                       "--output-dir", str(tmp_path / "out")),
                                str(bad_tasks), ray_session.get_runtime_context().gcs_address)
    err = stderr.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("repb-ray: error: rank 0: task 'bad_tasks:WideLoss': loss(model, batch) returned shape "
                             "[16, 3], expected [16]"), err[0]
    log = err[0].split("(full log: ")[1].rstrip(")")
    assert os.path.exists(log) and "Traceback" in open(log).read()
    assert sorted(os.listdir(tmp_path / "out" / "wide")) == ["error.log"]


def test_a_name_with_another_config_is_refused_before_ray_starts(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "ray_results" / "mine").mkdir(parents=True)
    from repb_ray.config import Config
    from repb_ray.layout import RECORD_FILE
    from repb_ray.train.run_home import fingerprint, identity
    old = Config.from_yaml(SMOKE, ["name=mine"])
    (out / "ray_results" / "mine" / RECORD_FILE).write_text(json.dumps({"name": "mine", "fingerprint": fingerprint(old),
                                                                        "identity": identity(old)}))
    code = cli_main(_train("--set", "name=mine", "--set", "policy_args.rho=0.3", "--output-dir", str(out)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert ("run 'mine' in " in err and "was started with another config (policy_args.rho: 0.5 -> 0.3)" in err
            and "--set name=..." in err and "--resume" in err and "--overwrite" in err), err


@pytest.mark.parametrize("change,fixed", [("optimizer=adamw", "optimizer"), ("coordinator_shards=2", "coordinator_shards"),
                                          ("target_pruned=0.3", None), ("seed=3", "seed")])
def test_resume_with_a_change_the_run_cannot_take_is_refused_at_claim_time(tmp_path, capsys, change, fixed):
    """Refused before anything starts, naming the key (a budget run's epochs likewise: below)."""
    out = tmp_path / "out"
    (out / "ray_results" / "mine").mkdir(parents=True)
    from repb_ray.config import Config
    from repb_ray.layout import RECORD_FILE
    from repb_ray.train.run_home import fingerprint, identity
    budget = ["target_pruned=0.3", "policy_args={window: 1}"]  # a budget sets rho: the config names none
    old = Config.from_yaml(SMOKE, ["name=mine", *budget] if fixed is None else ["name=mine"])
    (out / "ray_results" / "mine" / RECORD_FILE).write_text(json.dumps({"name": "mine", "fingerprint": fingerprint(old),
                                                                        "identity": identity(old)}))
    extra = ["--set", budget[0], "--set", budget[1], "--set", "epochs=5"] if fixed is None else ["--set", change]
    code = cli_main(_train("--set", "name=mine", *extra, "--resume", "--output-dir", str(out)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"--resume cannot change {fixed or 'epochs'} of run 'mine'" in err and "--overwrite" in err, err
    assert sorted(os.listdir(out / "ray_results" / "mine")) == ["_owner", RECORD_FILE]  # the record untouched
    assert json.loads((out / "ray_results" / "mine" / RECORD_FILE).read_text())["fingerprint"] == fingerprint(old)


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_exits_non_zero(bad_tasks, tmp_path, request):
    session = request.getfixturevalue("ray_session")
    code, stderr = _cli_process(["sweep", "--config", SWEEP, "--set", "task=bad_tasks:NanLoss", "--set", "num_workers=1",
                                 "--set", "sweep.search={policy_args.rho: {grid: [0.5]}}", "--set", "sweep.baselines=[]",
                                 "--set", "tracking_uri=none", "--output-dir", str(tmp_path / "out")],
                                str(bad_tasks), session.get_runtime_context().gcs_address)
    err = stderr.strip().splitlines()
    assert code == 2 and err[-1].startswith("repb-ray: error: every trial of sweep sweep_smoke failed"), err[-3:]
