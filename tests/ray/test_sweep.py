"""Sweeps on local Ray: a restarted trial whose run had ended, Optuna beyond grids."""

import glob
import json
import os

import pytest
from helpers import ROOT, PicklePayload

from repb_ray import layout
from repb_ray.config import Config
from repb_ray.train import run_home
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.sweep import TRIAL_RESOURCES, TrialContext, run_sweep, run_trial

pytestmark = [pytest.mark.ray]


def _tune_once(context, tmp_path, name):
    """A one-trial Tune experiment of run_trial (trial t000-s0): its last result and the epochs Tune got."""
    from ray import tune
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(run_trial, context=context), TRIAL_RESOURCES),
                       param_space={"index": 0, "trial": {}},
                       tune_config=tune.TuneConfig(metric="test_accuracy", mode="max"),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name=name))
    result = tuner.fit()[0]
    assert result.error is None, result.error
    return result.metrics, result.metrics_dataframe["epoch"].tolist()


@pytest.mark.slow
def test_a_restarted_trial_whose_run_had_ended_reports_its_last_epoch(ray_session, smoke_config, tmp_path):
    """A sweep's driver killed between a trial's end and Tune's next save: the restored sweep runs the
    trial again. A run that had ended is not trained again; one that had only reached its last
    checkpoint resumes with no epoch left. Tune gets the final epoch either way (else the sweep fails:
    no metric)."""
    base = Config.from_yaml(smoke_config, ["epochs=2", "tracking_uri=none", f"output_dir={tmp_path}"]).to_dict()
    home = tmp_path / "store" / "sweep1"
    context = TrialContext(base, None, None, str(tmp_path / "trials"), ("t000-s0",), str(home), {})
    first, epochs = _tune_once(context, tmp_path, "first")
    assert epochs == [1, 2]
    run_dir = tmp_path / "trials" / "t000-s0"
    summary = json.loads((run_dir / "summary.json").read_text())
    stamp = os.stat(run_dir / "summary.json").st_mtime_ns
    assert first["epoch"] == 2 and first["test_accuracy"] == summary["final_metric"]
    again, epochs = _tune_once(context, tmp_path, "again")
    assert epochs == [2]
    assert again["epoch"] == 2 and again["test_accuracy"] == summary["final_metric"]
    assert os.stat(run_dir / "summary.json").st_mtime_ns == stamp  # not trained again
    # the run's last checkpoint saved, its summary not yet written
    record_file = home / "t000-s0" / layout.RECORD_FILE  # the trial's home is in its sweep's
    record = json.loads(record_file.read_text())
    del record[run_home.FINISHED]
    record_file.write_text(json.dumps(record))
    os.unlink(run_dir / "summary.json")
    last, epochs = _tune_once(context, tmp_path, "last")
    assert epochs == [2]
    assert last["epoch"] == 2 and last["test_accuracy"] == summary["final_metric"]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert [e["plan_digest"] for e in resumed["per_epoch"]] == [e["plan_digest"] for e in summary["per_epoch"]]


@pytest.mark.slow
def test_an_optuna_sweep_finds_a_pareto_front(ray_session, tmp_path):
    """Search beyond grids: Optuna draws rho and W (two objectives), every trial is reported once."""
    pytest.importorskip("optuna")
    spec = SweepSpec.from_yaml(os.path.join(ROOT, "jobs", "configs", "optuna_smoke.yaml"),
                               [f"output_dir={tmp_path}", "tracking_uri=none", "sweep.num_samples=2",
                                "eval_mode=async"])  # the reporter holds each epoch until its metrics are in
    summary = run_sweep(spec)
    assert [t["status"] for t in summary["trials"]] == ["FINISHED"] * 2
    drawn = [t["method"] for t in summary["trials"]]
    assert len(set(drawn)) == 2 and all(m.startswith("RePB (") for m in drawn)
    assert summary["pareto_front"] and set(summary["pareto_front"]) <= {t["trial"] for t in summary["trials"]}
    for t in summary["trials"]:  # each trial's training time over its wall time
        assert 0 < t["train_share"] < 1 and t["train_share"] == pytest.approx(t["train_time_s"] / t["wall_time_s"])
    assert 0 < summary["train_share"] < 1
    assert list(summary["code_versions"].values()) == [[t["trial"] for t in summary["trials"]]]  # one version
    # Tune (and so its searchers and schedulers) saw every epoch once, in order, with its own test metrics
    # (the workers evaluate epoch E while E+1 trains, eval_mode async)
    results = glob.glob(str(tmp_path / "optuna_smoke" / "**" / "result.json"), recursive=True)
    assert len(results) == 2
    for path in results:
        with open(path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        assert [r["epoch"] for r in rows] == [1, 2] and all("test_accuracy" in r for r in rows)
        assert not any("eval_pending" in r or "eval_result" in r for r in rows)


def test_tune_state_planted_where_the_sweep_never_ran_is_not_loaded(ray_session, tmp_path):
    """Whoever can write the shared folder cannot run code in the next sweep driver: a tuner.pkl under the
    sweep's predictable path, without this sweep's record, is refused and never unpickled."""
    import pickle

    from repb_ray.config import ConfigError
    spec = SweepSpec.from_yaml(os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml"),
                               [f"output_dir={tmp_path}", "tracking_uri=none"])
    planted = tmp_path / "sweep_smoke" / "tune" / "sweep_smoke"
    planted.mkdir(parents=True)
    (planted / "tuner.pkl").write_bytes(pickle.dumps(PicklePayload(str(tmp_path / "ran"))))
    with pytest.raises(ConfigError, match="holds Tune state that this sweep did not write"):
        run_sweep(spec)
    assert not (tmp_path / "ran").exists()


def test_a_trial_whose_run_ends_right_after_its_last_report_gets_every_epoch_to_tune(ray_session, tmp_path):
    """Tune slow to ask for the next result (a callback taking 2 s) while the run ends right after its last
    two rows: each epoch reaches Tune once, in order, and the trial ends. (Ray's own TuneReportCallback
    hands the rows to Tune's main thread, which deadlocks here with the function's final report: the
    trial stays RUNNING without epoch 2, until the time budget stops the experiment.)"""
    import time

    from ray import tune

    class Slow(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            time.sleep(2)

    def run_that_ends_at_once(reporter):
        """A Train controller's reports, then the run ends at once: epoch 1 pending, then epoch 1's
        evaluation with epoch 2 in one report (two rows), as an async evaluation's last epoch reports."""
        from repb_ray.train.messages import EVAL_PENDING, EVAL_RESULT
        reporter.after_report(None, [{"epoch": 1, EVAL_PENDING: True}], None)
        reporter.after_report(None, [{"epoch": 2, "test_accuracy": 0.6,
                                      EVAL_RESULT: {"epoch": 1, "test_accuracy": 0.5}}], None)

    def trial(config):  # defined here: pickled by value, the test module is not importable in Ray's workers
        from repb_ray.tune.reporter import train_and_report
        train_and_report(run_that_ends_at_once)

    tuner = tune.Tuner(tune.with_resources(trial, TRIAL_RESOURCES),
                       tune_config=tune.TuneConfig(metric="test_accuracy", mode="max", time_budget_s=60),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="ends", callbacks=[Slow()]))
    t = time.perf_counter()
    result = tuner.fit()[0]
    assert result.error is None, result.error
    assert result.metrics_dataframe["epoch"].tolist() == [1, 2]
    assert result.metrics_dataframe["test_accuracy"].tolist() == [0.5, 0.6]
    assert time.perf_counter() - t < 50
