"""Config: one frozen dataclass; YAML, --set and Tune all go through its validation."""

import dataclasses
import glob
import os

import pytest

from conftest import ROOT
from repb_ray.config import Config, ConfigError, parse_overrides


def test_shipped_configs_load():
    for path in glob.glob(os.path.join(ROOT, "jobs", "configs", "*.yaml")):
        if not os.path.basename(path).startswith("sweep"):
            cfg = Config.from_yaml(path)
            assert cfg.name == os.path.splitext(os.path.basename(path))[0]
    main = Config.from_yaml(os.path.join(ROOT, "jobs", "configs", "fashion_mnist_repb.yaml"))
    assert main.num_workers == 2 and main.policy == "repb" and main.dataset == "fashion_mnist"


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["rho=0.3", "lwp=false", "ctr_max=null", "fail_at={epoch: 2}"]) == \
        {"rho": 0.3, "lwp": False, "ctr_max": None, "fail_at": {"epoch": 2}}
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["rho"])


@pytest.mark.parametrize("changes,msg", [
    ({"rh": 0.3}, "unknown config key 'rh' (did you mean 'rho'?)"),
    ({"rho": 2}, "rho must be in [0, 1], got rho=2"),
    ({"window": 0}, "window must be >= 1, got window=0"),
    ({"policy": "infobach"}, "policy must be one of repb, infobatch, random, full, got policy='infobach' (did you mean 'infobatch'?)"),
    ({"dataset": "cifar"}, "did you mean"),
    ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"lwp": "yes"}, "lwp must be true or false"),
    ({"fail_at": {"epoch": 2, "stp": 1}}, "unknown fail_at key 'stp' (did you mean 'step'?)"),
    ({"fail_at": {"epoch": 2, "kind": "driver"}}, "fail_at.kind must be one of worker, coordinator"),
    ({"name": "a/b"}, "name must be a non-empty string without '/'"),
])
def test_bad_values_raise_one_line_with_the_fix(changes, msg):
    with pytest.raises(ConfigError) as e:
        Config().replace(**changes)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_config_is_frozen_and_policy_params_follow_policy():
    cfg = Config(policy="infobatch", epochs=7, prune_ratio=0.4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rho = 0.1
    assert cfg.policy_params() == {"prune_ratio": 0.4, "num_epochs": 7, "delta": 0.875}
    assert Config(policy="full").policy_params() == {}
    assert Config(dataset="cifar10").use_augment and not Config().use_augment
