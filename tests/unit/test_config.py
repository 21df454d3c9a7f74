"""Config: one frozen dataclass; YAML, --set and Tune all go through its validation."""

import dataclasses
import glob
import os

import pytest
import yaml
from helpers import ROOT

from repb_ray.config import Config, ConfigError, parse_overrides

pytestmark = pytest.mark.unit  # in-process, seconds


def test_shipped_configs_load():
    from repb_ray.tune.spec import SweepSpec
    for path in glob.glob(os.path.join(ROOT, "jobs", "configs", "*.yaml")):
        with open(path) as fh:
            is_sweep = "base" in yaml.safe_load(fh)
        if is_sweep:
            spec = SweepSpec.from_yaml(path)
            assert spec.trials() or spec.search_alg == "optuna"  # optuna draws its trials as it goes
        else:
            assert Config.from_yaml(path).name is None  # unnamed: the CLI names it after the file and config
    main = Config.from_yaml(os.path.join(ROOT, "jobs", "configs", "fashion_mnist_repb.yaml"))
    assert main.num_workers == 2 and main.policy == "repb" and main.task == "fashion_mnist"


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["policy_args.rho=0.3", "audit=false", "target_pruned=null", "fail_at={epoch: 2}"]) == \
        {"policy_args.rho": 0.3, "audit": False, "target_pruned": None, "fail_at": {"epoch": 2}}
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["rho"])


def test_dotted_overrides_set_task_args(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: synthetic\ntask_args: {size: 64, noise: 1.0}\npolicy_args: {rho: 0.5}\nepochs: 3\n")
    cfg = Config.from_yaml(str(p), ["task_args.size=128", "task_args.dim=8", "policy_args.window=4"])
    assert cfg.task_args == {"size": 128, "noise": 1.0, "dim": 8} and cfg.policy_args == {"rho": 0.5, "window": 4}
    with pytest.raises(ConfigError, match="epochs is not a mapping"):
        Config.from_yaml(str(p), ["epochs.x=1"])
    # another task or policy drops the file's arguments, which belonged to the old one
    assert Config.from_yaml(str(p), ["policy=random"]).policy_args == {}
    assert Config.from_yaml(str(p), ["task=fashion_mnist"]).task_args == {}


def test_strings_given_as_values_stay_strings(tmp_path):
    """--output-dir and --tracking-uri reach the config as given, never parsed as YAML."""
    p = tmp_path / "c.yaml"
    p.write_text("task: synthetic\n")
    for raw in ("/mnt/my runs #2", "2024", "yes", "null"):
        assert Config.from_yaml(str(p), values={"output_dir": raw}).output_dir == raw


@pytest.mark.parametrize("changes,msg", [
    ({"rhoo": 0.3}, "unknown config key 'rhoo'"),
    ({"rho": 0.3}, "config key 'rho' is now policy_args.rho"),
    ({"policy_args": {"rho": 2}}, "rho must be in [0, 1], got rho=2"),
    ({"policy_args": {"rh": 0.3}}, "unknown parameter 'rh' for policy 'repb' (did you mean 'rho'?)"),
    ({"policy_args": {"window": 0}}, "window must be >= 1, got window=0"),
    ({"policy_args": {"num_epochs": 3}}, "policy_args.num_epochs is set by the run: set the config key 'epochs'"),
    ({"policy": "infobach"},
     "policy must be one of repb, infobatch, random, full, egreedy, ucb, orderdp, got policy='infobach' (did you mean 'infobatch'?)"),
    ({"dataset": "cifar10"}, "config key 'dataset' is now task"),
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw, got optimizer='adam' (did you mean 'adamw'?)"),
    ({"lr": 0}, "lr must be in (0, inf), got lr=0"),
    ({"policy_args": {"ctr_max": 0.5}}, "ctr_max must be in [1, inf), got ctr_max=0.5"),
    ({"target_pruned": 1.2}, "target_pruned must be in [0, 1), got target_pruned=1.2"),
    ({"policy": "full", "target_pruned": 0.5}, "target_pruned does not apply to policy=full"),
    ({"task_args": [1]}, "task_args must be a mapping"),
    ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"num_workers": [2, 1]}, "num_workers=[min, max] needs min <= max, got num_workers=[2, 1]"),
    ({"num_workers": [0, 2]}, "num_workers[0] must be >= 1"),
    ({"num_workers": [1, 2, 3]}, "num_workers must be a number or [min, max]"),
    ({"policy_args": {"lwp": "yes"}}, "lwp must be true or false"),
    ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
    ({"eval_every": 0}, "eval_every must be >= 1, got eval_every=0"),
    ({"output_dir": "s3://bucket/runs"}, "output_dir='s3://bucket/runs' is a URI"),
    ({"name": "."}, "name must be 1-128 letters"),
    ({"name": ".."}, "name must be 1-128 letters"),
    ({"name": "ray_results"}, "name='ray_results' is a name repb_ray uses"),
    ({"fail_at": {"epoch": 2, "stp": 1}}, "unknown fail_at key 'stp' (did you mean 'step'?)"),
    ({"fail_at": {"epoch": 2, "kind": "driver"}}, "fail_at.kind must be one of worker, kill, coordinator, shard"),
    ({"name": "a/b"}, "name must be 1-128 letters"),
])
def test_bad_values_raise_one_line_with_the_fix(changes, msg):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({**Config().to_dict(), **changes})
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_config_is_frozen_and_the_policy_fills_and_checks_its_parameters():
    cfg = Config(policy="infobatch", epochs=7, policy_args={"prune_ratio": 0.4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 1
    assert cfg.policy_params() == {"prune_ratio": 0.4, "num_epochs": 7, "delta": 0.875, "anneal": True,
                                   "target_pruned": None}
    assert Config(policy="full").policy_params() == {}
    assert Config(policy="ucb", target_pruned=0.5, epochs=4).policy_params() == {
        "prune_ratio": 0.5, "ucb_c": 1.0, "ema_alpha": 0.8, "select_every": 1, "target_pruned": 0.5, "num_epochs": 4}
    # without a budget, RePB does not get the run's length (its state would then change with --resume)
    assert "num_epochs" not in Config(policy="repb").policy_params() or \
        Config(policy="repb").policy_params()["num_epochs"] is None


@pytest.mark.slow  # a fresh interpreter
def test_config_imports_neither_torch_nor_ray():
    """config.py and errors.py load where neither is installed (a test process with both blocked)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'ray', 'mlflow'):\n"
            "            raise ImportError(f'blocked: {name}')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import repb_ray.config, repb_ray.errors, repb_ray.core, repb_ray.redact, repb_ray.storage\n"
            "from repb_ray.tune.spec import SweepSpec\n"
            "from repb_ray.tune import tables\n"
            "repb_ray.config.Config(policy='infobatch')\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def test_elastic_workers_are_a_min_max_pair():
    c = Config(num_workers=[1, 4])
    assert c.elastic and c.min_workers == 1 and c.world_size == 4 and c.scaling_workers() == (1, 4)
    fixed = Config(num_workers=2)
    assert not fixed.elastic and fixed.world_size == 2 and fixed.scaling_workers() == 2
    assert Config(num_workers=0).world_size == 1 and Config(num_workers=0).scaling_workers() == 0


def test_log_model_is_one_of_its_choices_and_auto_exports_a_run_but_not_a_sweeps_trial():
    from repb_ray.train.driver import model_logging
    with pytest.raises(ConfigError, match="log_model"):
        Config(log_model="pickle")
    assert model_logging("auto", in_sweep=False) == "export"
    assert model_logging("auto", in_sweep=True) == "weights"
    assert [model_logging(m, in_sweep=True) for m in ("export", "weights", "none")] == ["export", "weights", "none"]
