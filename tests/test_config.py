"""Config: one frozen dataclass; YAML, --set and Tune all go through its validation."""

import dataclasses
import glob
import os

import pytest

from conftest import ROOT
from repb_ray.config import Config, ConfigError, parse_overrides


def test_shipped_configs_load():
    from repb_ray.tune.spec import SweepSpec
    for path in glob.glob(os.path.join(ROOT, "jobs", "configs", "*.yaml")):
        stem = os.path.basename(path)
        if stem.startswith(("sweep", "table1", "figure2")):
            assert SweepSpec.from_yaml(path).trials()
        else:
            assert Config.from_yaml(path).name is None  # unnamed: the CLI names it after the file and config
    main = Config.from_yaml(os.path.join(ROOT, "jobs", "configs", "fashion_mnist_repb.yaml"))
    assert main.num_workers == 2 and main.policy == "repb" and main.task == "fashion_mnist"


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["rho=0.3", "lwp=false", "ctr_max=null", "fail_at={epoch: 2}"]) == \
        {"rho": 0.3, "lwp": False, "ctr_max": None, "fail_at": {"epoch": 2}}
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["rho"])


def test_dotted_overrides_set_task_args(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: synthetic\ntask_args: {size: 64, noise: 1.0}\nrho: 0.5\n")
    cfg = Config.from_yaml(str(p), ["task_args.size=128", "task_args.dim=8"])
    assert cfg.task_args == {"size": 128, "noise": 1.0, "dim": 8}
    with pytest.raises(ConfigError, match="rho is not a mapping"):
        Config.from_yaml(str(p), ["rho.x=1"])


@pytest.mark.parametrize("changes,msg", [
    ({"rh": 0.3}, "unknown config key 'rh' (did you mean 'rho'?)"),
    ({"rho": 2}, "rho must be in [0, 1], got rho=2"),
    ({"window": 0}, "window must be >= 1, got window=0"),
    ({"policy": "infobach"}, "policy must be one of repb, infobatch, random, full, egreedy, ucb, got policy='infobach' (did you mean 'infobatch'?)"),
    ({"dataset": "cifar10"}, "config key 'dataset' is now task"),
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw, got optimizer='adam' (did you mean 'adamw'?)"),
    ({"lr": 0}, "lr must be in (0, inf), got lr=0"),
    ({"ctr_max": 0.5}, "ctr_max must be in [1, inf), got ctr_max=0.5"),
    ({"target_pruned": 1.2}, "target_pruned must be in [0, 1), got target_pruned=1.2"),
    ({"policy": "full", "target_pruned": 0.5}, "target_pruned does not apply to policy=full"),
    ({"task_args": [1]}, "task_args must be a mapping"),
    ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"lwp": "yes"}, "lwp must be true or false"),
    ({"fail_at": {"epoch": 2, "stp": 1}}, "unknown fail_at key 'stp' (did you mean 'step'?)"),
    ({"fail_at": {"epoch": 2, "kind": "driver"}}, "fail_at.kind must be one of worker, kill, coordinator"),
    ({"name": "a/b"}, "name must be a non-empty string without '/'"),
])
def test_bad_values_raise_one_line_with_the_fix(changes, msg):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({**Config().to_dict(), **changes})
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_config_is_frozen_and_policy_params_follow_policy():
    cfg = Config(policy="infobatch", epochs=7, prune_ratio=0.4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rho = 0.1
    assert cfg.policy_params() == {"prune_ratio": 0.4, "num_epochs": 7, "delta": 0.875, "anneal": True}
    assert Config(policy="full").policy_params() == {}
    assert Config(policy="ucb", target_pruned=0.5, epochs=4).policy_params() == {
        "prune_ratio": 0.5, "ucb_c": 1.0, "alpha": 0.8, "select_every": 1, "target_pruned": 0.5, "num_epochs": 4}
