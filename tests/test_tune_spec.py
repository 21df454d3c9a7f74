"""Sweep spec validation, trial resources and the Pareto report (no Ray needed)."""

import pytest

from repb_ray.config import Config, ConfigError
from repb_ray.tune.report import format_table, pareto_front
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.sweep import trial_resources


def test_grid_trials_cross_product_plus_baselines():
    spec = SweepSpec(base={"task": "synthetic"}, search={"rho": {"grid": [0.3, 0.5]}, "window": {"grid": [1, 4]}},
                     baselines=[{"policy": "full"}])
    trials = spec.grid_trials()
    assert len(trials) == 5 and trials[-1] == {"policy": "full", "_baseline": True}
    assert {"rho": 0.5, "window": 4} in trials


@pytest.mark.parametrize("kwargs,msg", [
    ({"search": {"rhoo": {"grid": [0.1]}}}, "search key 'rhoo' is not a config key (did you mean 'rho'?)"),
    ({"search": {"rho": {"gird": [0.1]}}}, "search.rho must be one of"),
    ({"search": {"rho": {"grid": [1.5]}}}, "rho must be in [0, 1], got rho=1.5"),
    ({"base": {"epoch": 3}}, "unknown config key 'epoch' (did you mean 'epochs'?)"),
    ({"baselines": [{"policy": "ful"}]}, "did you mean 'full'?"),
    ({"base": {"num_workers": 0}}, "local mode"),
])
def test_bad_sweep_specs_fail_with_the_fix(kwargs, msg):
    with pytest.raises(ConfigError) as e:
        SweepSpec(**kwargs)
    assert msg in str(e.value)


def test_unknown_sweep_file_key(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("serach: {}\n")
    with pytest.raises(ConfigError, match="unknown sweep key 'serach' \\(did you mean 'search'\\?\\)"):
        SweepSpec.from_yaml(str(p))


def test_trial_resources_never_oversubscribe_two_cores():
    base = Config(num_workers=2, cpus_per_worker=1)
    res, n, why = trial_resources(base, {"CPU": 4.0})
    assert res == {"cpu": 0, "memory": 1e6} and n == 1 and "2 workers" in why
    assert trial_resources(base, {"CPU": 9.0})[1] == 4
    assert trial_resources(Config(num_workers=2, use_gpu=True), {"CPU": 64.0, "GPU": 4.0})[1] == 2


def test_pareto_front_and_table():
    rows = [{"trial": "a", "final_accuracy": 0.90, "pruned_fraction": 0.0},
            {"trial": "b", "final_accuracy": 0.89, "pruned_fraction": 0.4},
            {"trial": "c", "final_accuracy": 0.88, "pruned_fraction": 0.3},   # dominated by b
            {"trial": "d", "final_accuracy": None, "pruned_fraction": None}]  # failed
    assert pareto_front(rows) == [0, 1]
    table = format_table(rows, [0, 1])
    assert table.splitlines()[2].rstrip().endswith("*") and "-" in table.splitlines()[-1]
