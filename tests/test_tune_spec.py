"""Sweep spec (trials, seeds, validation), trial admission and the reports (no Ray needed)."""

import pytest

from repb_ray.config import Config, ConfigError
from repb_ray.tune.report import aggregate, format_table, label_trials, paper_table, pareto_front
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.sweep import capacity, progress_line


def test_trials_are_grid_then_grids_then_baselines_times_seeds():
    spec = SweepSpec(base={"task": "synthetic"}, search={"rho": {"grid": [0.3, 0.5]}, "window": {"grid": [1, 4]}},
                     grids=[{"policy": ["infobatch"], "anneal": [True, False]}], baselines=[{"policy": "full"}],
                     seeds=[0, 1])
    trials = spec.trials()
    assert len(trials) == (4 + 2 + 1) * 2
    assert trials[0] == {"rho": 0.3, "window": 1, "seed": 0} and trials[1] == {"rho": 0.3, "window": 1, "seed": 1}
    assert {"policy": "infobatch", "anneal": False, "seed": 1} in trials and trials[-1] == {"policy": "full", "seed": 1}


def test_random_draws_are_seeded_by_the_sweep():
    spec = dict(base={"task": "synthetic"}, search={"rho": {"uniform": [0.1, 0.9]}, "window": {"grid": [1, 2]}},
                num_samples=3)
    a, b = SweepSpec(**spec).trials(), SweepSpec(**spec).trials()
    assert a == b and len(a) == 6 and len({t["rho"] for t in a}) == 6
    assert SweepSpec(**spec, sweep_seed=1).trials() != a


@pytest.mark.parametrize("kwargs,msg", [
    ({"search": {"rhoo": {"grid": [0.1]}}}, "search key 'rhoo' is not a config key (did you mean 'rho'?)"),
    ({"search": {"rho": {"gird": [0.1]}}}, "search.rho must be one of"),
    ({"search": {"rho": {"grid": [1.5]}}}, "rho must be in [0, 1], got rho=1.5"),
    ({"search": {"rho": {"uniform": [0.9, 0.1]}}}, "needs [lo, hi] with lo < hi"),
    ({"base": {"epoch": 3}}, "unknown config key 'epoch' (did you mean 'epochs'?)"),
    ({"baselines": [{"policy": "ful"}]}, "did you mean 'full'?"),
    ({"base": {"num_workers": 0}}, "local mode"),
    ({"grids": [{"policy": "repb"}]}, "each grid must map config keys to non-empty lists"),
    ({"seeds": [-1]}, "seed must be >= 0"),
    ({"search": {}, "grids": [], "baselines": []}, "the sweep has no trial"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials must be an integer >= 1"),
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


def test_capacity_follows_the_cluster_as_it_grows():
    base = Config(num_workers=2, cpus_per_worker=1)
    assert capacity(base, {"CPU": 0.0})[0] == 1      # an empty autoscaling cluster: one, to ask for nodes
    assert capacity(base, {"CPU": 4.0})[0] == 1 and "2 workers" in capacity(base, {"CPU": 4.0})[1]
    assert capacity(base, {"CPU": 9.0})[0] == 4      # nodes joined: more trials at once
    assert capacity(Config(num_workers=2, use_gpu=True), {"CPU": 64.0, "GPU": 4.0})[0] == 2
    assert capacity(Config(num_workers=1, worker_resources={"trainer": 1}), {"CPU": 9.0, "trainer": 2.0})[0] == 2


def test_methods_and_budgets_are_labelled_like_the_paper():
    trials = [{"policy": "repb", "window": 1, "target_pruned": 0.3}, {"policy": "repb", "window": 4, "target_pruned": 0.3},
              {"policy": "infobatch", "anneal": False, "target_pruned": 0.5}, {"policy": "infobatch", "target_pruned": 0.5},
              {"policy": "full"}, {"policy": "random", "target_pruned": 0.7}]
    assert label_trials(trials) == [("RePB (W=1)", 0.3), ("RePB (W=4)", 0.3), ("InfoBatch*", 0.5),
                                    ("InfoBatch", 0.5), ("Full data", 0.0), ("Random*", 0.7)]


def test_paper_table_means_drops_and_unreached_budgets():
    def row(method, budget, seed, metric, pruned, target=None):
        return {"trial": f"{method}{seed}", "method": method, "budget": budget, "seed": seed, "status": "FINISHED",
                "epochs": 5, "metric": metric, "pruned_fraction": pruned, "target_pruned": target, "wall_time_s": 1.0}
    rows = [row("Full data", 0.0, s, 0.90 + 0.01 * s, 0.0) for s in (0, 1)]
    rows += [row("RePB", 0.5, s, 0.89 + 0.01 * s, 0.5, 0.5) for s in (0, 1)]
    rows += [row("InfoBatch", 0.5, s, 0.88, 0.41, 0.5) for s in (0, 1)]
    text = paper_table(aggregate(rows), "accuracy", "max")
    assert "| Full data | 90.50 ± 0.71 |" in text
    assert "| RePB | 89.50 ± 0.71 (↓1.00) |" in text
    assert "\\ (41% reached) 88.00 ± 0.00 (↓2.50)" in text
    front = pareto_front(rows)
    assert format_table(rows, front).splitlines()[0].startswith("trial")


def test_progress_line_counts_results_and_time_left():
    line = progress_line(3, 12, 180.0, "RePB (target_pruned=0.5, seed=1)", "FINISHED", "test_accuracy", 0.87654, 0.4987)
    assert line == ("trial 3/12 finished: RePB (target_pruned=0.5, seed=1): test_accuracy 0.8765, 49.9% pruned "
                    "(3.0 min so far, about 9 min left)")
    assert progress_line(1, 2, 60.0, "Full data", "FAILED", "test_accuracy", None, None) == \
        "trial 1/2 failed: Full data: no test_accuracy (1.0 min so far, about 1 min left)"
