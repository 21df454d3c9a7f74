"""Sweep spec (trials, seeds, validation), trial admission and the reports (no Ray needed)."""

import pytest

from repb_ray.config import Config, ConfigError
from repb_ray.tune.admission import TrialDemand, capacity
from repb_ray.tune.progress import progress_line
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.tables import aggregate, format_table, label_trials, paper_table, pareto_front

pytestmark = pytest.mark.unit  # in-process, seconds


def test_trials_are_grid_then_grids_then_baselines_times_seeds():
    spec = SweepSpec(base={"task": "synthetic"}, search={"policy_args.rho": {"grid": [0.3, 0.5]},
                                                         "policy_args.window": {"grid": [1, 4]}},
                     grids=[{"policy": ["infobatch"], "policy_args.anneal": [True, False]}],
                     baselines=[{"policy": "full"}], seeds=[0, 1])
    trials = spec.trials()
    assert len(trials) == (4 + 2 + 1) * 2
    assert trials[0] == {"policy_args.rho": 0.3, "policy_args.window": 1, "seed": 0}
    assert trials[1] == {"policy_args.rho": 0.3, "policy_args.window": 1, "seed": 1}
    assert {"policy": "infobatch", "policy_args.anneal": False, "seed": 1} in trials
    assert trials[-1] == {"policy": "full", "seed": 1}
    assert spec.config_of(trials[0]).policy_args == {"rho": 0.3, "window": 1}
    assert SweepSpec(base={"task": "synthetic"}, baselines=[{"policy": "full"}], seeds=3).seed_list() == [0, 1, 2]


def test_random_draws_are_seeded_by_the_sweep():
    spec = dict(base={"task": "synthetic"}, search={"policy_args.rho": {"uniform": [0.1, 0.9]},
                                                    "policy_args.window": {"grid": [1, 2]}}, num_samples=3)
    a, b = SweepSpec(**spec).trials(), SweepSpec(**spec).trials()
    assert a == b and len(a) == 6 and len({t["policy_args.rho"] for t in a}) == 6
    assert SweepSpec(**spec, sweep_seed=1).trials() != a


@pytest.mark.parametrize("kwargs,msg", [
    ({"search": {"rhoo": {"grid": [0.1]}}}, "search key 'rhoo' is not a config key"),
    ({"search": {"rho": {"grid": [0.1]}}}, "search key 'rho': config key 'rho' is now policy_args.rho"),
    ({"search": {"policy_args.rho": {"gird": [0.1]}}}, "search.policy_args.rho must be one of"),
    ({"search": {"policy_args.rho": {"grid": [1.5]}}}, "rho must be in [0, 1], got rho=1.5"),
    ({"search": {"policy_args.rhoo": {"grid": [0.5]}}}, "unknown parameter 'rhoo' for policy 'repb'"),
    ({"search": {"policy_args.rho": {"uniform": [0.9, 0.1]}}}, "needs [lo, hi] with lo < hi"),
    ({"base": {"epoch": 3}}, "unknown config key 'epoch' (did you mean 'epochs'?)"),
    ({"baselines": [{"policy": "ful"}]}, "did you mean 'full'?"),
    ({"base": {"num_workers": 0}}, "local mode"),
    ({"grids": [{"policy": "repb"}]}, "each grid must map config keys to non-empty lists"),
    ({"seeds": [-1]}, "seed must be >= 0"),
    ({"seeds": 0}, "seeds must be a count >= 1"),
    ({"seeds": [1, 1]}, "seeds must not repeat"),
    ({"name": "../up"}, "sweep name must be 1-128 letters"),
    ({"search_alg": "optuner"}, "did you mean 'optuna'?"),
    ({"search": {}, "grids": [], "baselines": []}, "the sweep has no trial"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials must be an integer >= 1"),
    ({"base": {"eval_every": 2}, "asha": {"grace_period": 2}}, "use eval_every=1 with asha"),
    ({"grids": [{"eval_every": [1, 4]}], "asha": {"grace_period": 1}}, "use eval_every=1 with asha"),
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
    base = TrialDemand.of(Config(num_workers=2, cpus_per_worker=1))
    assert capacity(base, {"CPU": 0.0})[0] == 1      # an empty autoscaling cluster: one, to ask for nodes
    assert capacity(base, {"CPU": 4.0})[0] == 1 and "2 workers" in capacity(base, {"CPU": 4.0})[1]
    assert capacity(base, {"CPU": 9.0})[0] == 4      # nodes joined: more trials at once
    assert capacity(TrialDemand.of(Config(num_workers=2, use_gpu=True)), {"CPU": 64.0, "GPU": 4.0})[0] == 2
    assert capacity(TrialDemand.of(Config(num_workers=1, worker_resources={"trainer": 1})),
                    {"CPU": 9.0, "trainer": 2.0})[0] == 2


def test_methods_and_budgets_are_labelled_like_the_paper():
    trials = [{"policy": "repb", "policy_args.window": 1, "target_pruned": 0.3},
              {"policy": "repb", "policy_args.window": 4, "target_pruned": 0.3},
              {"policy": "infobatch", "policy_args.anneal": False, "target_pruned": 0.5},
              {"policy": "infobatch", "target_pruned": 0.5}, {"policy": "full"},
              {"policy": "random", "target_pruned": 0.7}]
    spec = SweepSpec(base={"task": "synthetic"}, baselines=trials)
    assert label_trials([spec.config_of(t) for t in trials]) == [("RePB (W=1)", 0.3), ("RePB (W=4)", 0.3), ("InfoBatch*", 0.5),
                                    ("InfoBatch", 0.5), ("Full data", 0.0), ("Random*", 0.7)]


def test_arms_that_differ_outside_the_policy_are_rows_of_their_own():
    trials = [{"policy": "repb", "target_pruned": 0.5}, {"policy": "repb", "target_pruned": 0.5, "ctr_normalize": True},
              {"policy": "repb", "target_pruned": 0.5, "seed": 3}]
    spec = SweepSpec(base={"task": "synthetic"}, baselines=trials)
    labels = label_trials([spec.config_of(t) for t in trials])
    assert labels == [("RePB (ctr_normalize=False)", 0.5), ("RePB (ctr_normalize=True)", 0.5),
                      ("RePB (ctr_normalize=False)", 0.5)]   # another seed of the first arm


def test_an_ablation_is_named_by_the_switch_it_turns_off_and_the_plain_arm_stays_the_reference():
    trials = [{"policy": "repb", "target_pruned": 0.5}, {"policy": "repb", "target_pruned": 0.5, "policy_args.lwp": False},
              {"policy": "repb", "target_pruned": 0.5, "policy_args.ctr": False}, {"policy": "repb", "policy_args.rho": 0.7}]
    spec = SweepSpec(base={"task": "synthetic"}, search={}, baselines=trials)
    assert label_trials([spec.config_of(t) for t in trials]) == [("RePB", 0.5), ("RePB (lwp=False)", 0.5),
                                                                  ("RePB (ctr=False)", 0.5), ("RePB (rho=0.7)", None)]


def test_seed_keys_follow_each_trials_seed_and_pair_instead_of_splitting_arms():
    spec = SweepSpec(base={"task": "fashion_mnist", "task_args": {"train_subset": 100, "label_noise": 0.4}}, search={},
                     grids=[{"policy": ["repb"], "target_pruned": [0.5]}], baselines=[{"policy": "full"}],
                     seeds=[3, 4], seed_keys=["task_args.subset_seed", "task_args.noise_seed"])
    trials = spec.trials()
    assert trials[0] == {"policy": "repb", "target_pruned": 0.5, "seed": 3, "task_args.subset_seed": 3,
                         "task_args.noise_seed": 3}
    cfg = spec.config_of(trials[-1])
    assert cfg.seed == 4 and cfg.task_args["subset_seed"] == 4 and cfg.task_args["noise_seed"] == 4
    labels = label_trials([spec.config_of(t) for t in trials], spec.seed_keys)
    assert labels == [("RePB", 0.5), ("RePB", 0.5), ("Full data", 0.0), ("Full data", 0.0)]
    assert label_trials([spec.config_of(t) for t in trials])[0][0] != "RePB"   # without them: rows per seed
    plain = SweepSpec(**{**{k: getattr(spec, k) for k in ("base", "search", "grids", "baselines", "seeds")}})
    assert plain.fingerprint() != spec.fingerprint()   # a resumed sweep must draw its data the same way


@pytest.mark.parametrize("kwargs,msg", [
    ({"seed_keys": ["task_args.subset_seed"]}, r"seed_keys=\['task_args.subset_seed'\] take each trial's seed: give seeds"),
    ({"seed_keys": "task_args.noise_seed", "seeds": 2}, "seed_keys must be a list of config keys"),
    ({"seed_keys": ["seed"], "seeds": 2}, "'seed' is each trial's seed already"),
    ({"seed_keys": ["noise_seed"], "seeds": 2}, "seed_keys key 'noise_seed' is not a config key"),
])
def test_bad_seed_keys_are_one_line(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        SweepSpec(base={"task": "synthetic"}, baselines=[{"policy": "full"}], **kwargs)


def _row(method, budget, seed, metric, pruned, target=None):
    return {"trial": f"{method}{seed}", "method": method, "budget": budget, "seed": seed, "status": "FINISHED",
            "epochs": 5, "metric": metric, "pruned_fraction": pruned, "target_pruned": target, "wall_time_s": 1.0}


def test_paper_table_intervals_drops_and_unreached_budgets():
    rows = [_row("Full data", 0.0, s, 0.90 + 0.01 * s, 0.0) for s in (0, 1)]
    rows += [_row("RePB", 0.5, s, 0.89 + 0.01 * s, 0.5, 0.5) for s in (0, 1)]
    rows += [_row("InfoBatch", 0.5, s, 0.88, 0.41, 0.5) for s in (0, 1)]
    rows += [_row("RePB (rho=0.3)", None, s, 0.895, 0.28) for s in (0, 1)]   # a fixed-knob arm
    text = paper_table(aggregate(rows), "accuracy", "max")
    assert "| Full data | 90.50 [84.15, 96.85] |" in text                    # t(0.975, 1) = 12.706
    assert "| RePB | 89.50 [83.15, 95.85] (↓1.00) |" in text
    assert "\\ (41% reached) 88.00 [88.00, 88.00] (↓2.50)" in text
    assert "| RePB (rho=0.3) | 89.50 [89.50, 89.50] (↓1.00) @28% |" in text     # placed at what it reached
    front = pareto_front(rows)
    assert format_table(rows, front).splitlines()[0].startswith("trial")


def test_a_cell_whose_knob_hit_the_cap_is_marked_even_when_the_fraction_is_met():
    rows = [_row("Full data", 0.0, s, 0.90, 0.0) for s in (0, 1)]
    rows += [dict(_row("RePB", 0.5, s, 0.85, 0.5, 0.5), knob_capped=s == 1) for s in (0, 1)]
    text = paper_table(aggregate(rows), "accuracy", "max")
    assert "| RePB | \\ (50% reached) 85.00" in text


def test_paired_statistics_on_a_hand_made_result_set():
    """Three seeds. Random* - RePB = -0.02, -0.01, -0.03: mean -0.02, sd 0.01, t = -3.464, p = 0.0742, 95%
    interval -0.02 +- 4.3027 * 0.01 / sqrt(3) = [-0.0448, 0.0048]: not significant. UCB - RePB = 0.04, 0.035,
    0.03: t = 12.12, p = 0.0067, interval [0.0226, 0.0474]: significant (also after Holm: 2 x 0.0067)."""
    from repb_ray.tune.stats import estimate, t_quantile
    from repb_ray.tune.tables import compare, difference_table
    rows = [_row("Full data", 0.0, s, v, 0.0) for s, v in enumerate((0.90, 0.91, 0.92))]
    rows += [_row("RePB", 0.5, s, v, 0.5, 0.5) for s, v in enumerate((0.88, 0.89, 0.90))]
    rows += [_row("Random*", 0.5, s, v, 0.5, 0.5) for s, v in enumerate((0.86, 0.88, 0.87))]
    rows += [_row("UCB", 0.5, s, v, 0.5, 0.5) for s, v in enumerate((0.92, 0.925, 0.93))]
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729749464, abs=1e-9)
    full = estimate([0.90, 0.91, 0.92])
    assert (full.mean, full.sd, full.lo, full.hi) == pytest.approx((0.91, 0.01, 0.91 - 0.0248414, 0.91 + 0.0248414))
    agg = aggregate(rows)
    comp = compare(agg, "RePB")
    rnd, p_rnd = comp["pairs"][("Random*", 0.5)]
    ucb, p_ucb = comp["pairs"][("UCB", 0.5)]
    assert (rnd.diff.mean, rnd.diff.sd, rnd.t, rnd.p) == pytest.approx((-0.02, 0.01, -3.4641016, 0.0741799), rel=1e-5)
    assert (rnd.diff.lo, rnd.diff.hi) == pytest.approx((-0.0448414, 0.0048414), rel=1e-4) and not rnd.significant
    assert (ucb.diff.mean, ucb.t, ucb.p) == pytest.approx((0.035, 12.1243557, 0.0067341), rel=1e-5)
    assert (ucb.diff.lo, ucb.diff.hi) == pytest.approx((0.0225793, 0.0474207), rel=1e-4) and ucb.significant
    assert (p_rnd, p_ucb) == pytest.approx((0.0741799, 2 * 0.0067341), rel=1e-4)     # Holm
    table = difference_table(agg, comp, "accuracy")
    # detectable by hand: (t(0.975, 2) + t(0.8, 2)) sd / sqrt(3) = (4.303 + 1.061) * 1 / 1.732 = 3.10 points
    assert "| Random* | -2.00 [-4.48, 0.48] (p=0.074, Holm 0.074); not resolved at 3 seeds (detectable ≈ 3.10) |" in table
    assert "| UCB | 3.50 [2.26, 4.74]*† (p=0.007, Holm 0.013) |" in table
    assert compare(agg, "InfoBatch") == {}  # a reference the sweep did not run: no comparison


def test_holm_counts_the_same_runs_once_and_unreached_budgets_are_marked():
    """InfoBatch stopping at 41% under both budgets gives the same results twice: one test in the family."""
    from repb_ray.tune.stats import holm
    from repb_ray.tune.tables import compare, difference_table
    rows = []
    for b in (0.5, 0.7):
        rows += [_row("RePB", b, s, 0.80 + 0.01 * s, b, b) for s in range(3)]
        rows += [_row("InfoBatch", b, s, 0.75 + 0.012 * s, 0.41, b) for s in range(3)]
        rows += [_row("Random*", b, s, 0.79 - b / 10 + 0.009 * s + 0.002 * s * s, b, b) for s in range(3)]
    agg = aggregate(rows)
    comp = compare(agg, "RePB")
    pairs = comp["pairs"]
    assert pairs[("InfoBatch", 0.5)][0].p == pairs[("InfoBatch", 0.7)][0].p
    expected = holm([pairs[("InfoBatch", 0.5)][0].p, pairs[("Random*", 0.5)][0].p, pairs[("Random*", 0.7)][0].p])
    assert [pairs[k][1] for k in [("InfoBatch", 0.5), ("Random*", 0.5), ("Random*", 0.7)]] == pytest.approx(expected)
    assert pairs[("InfoBatch", 0.7)][1] == pairs[("InfoBatch", 0.5)][1]
    assert "| InfoBatch | \\ " in difference_table(agg, comp, "accuracy")


def test_progress_line_counts_results_and_time_left():
    line = progress_line(3, 12, 180.0, "RePB (target_pruned=0.5, seed=1)", "FINISHED", "test_accuracy", 0.87654, 0.4987)
    assert line == ("trial 3/12 finished: RePB (target_pruned=0.5, seed=1): test_accuracy 0.8765, 49.9% pruned "
                    "(3.0 min so far, about 9 min left)")
    assert progress_line(1, 2, 60.0, "Full data", "FAILED", "test_accuracy", None, None) == \
        "trial 1/2 failed: Full data: no test_accuracy (1.0 min so far, about 1 min left)"


def test_a_resumed_sweep_paces_the_time_left_by_its_own_trials():
    """19 of 95 done, but only 1 of them in this invocation's 0.8 min: 76 left at 0.8 min each."""
    line = progress_line(19, 95, 48.0, "RePB", "FINISHED", "test_accuracy", 0.85, 0.3, ended_here=1)
    assert line.endswith("(0.8 min so far, about 61 min left)")


def test_a_sweep_whose_trials_ran_different_code_says_so():
    from repb_ray.tune.tables import code_versions, mixed_code
    rows = [{"trial": "t0", "code": "aaaa"}, {"trial": "t1", "code": "aaaa"}, {"trial": "t2", "code": None}]
    assert code_versions(rows) == {"aaaa": ["t0", "t1"]} and mixed_code(code_versions(rows)) is None
    rows.append({"trial": "t3", "code": "bbbb"})
    warning = mixed_code(code_versions(rows))
    assert warning.startswith("warning: the trials ran 2 versions") and "aaaa (2 trials), bbbb (1 trial)" in warning
