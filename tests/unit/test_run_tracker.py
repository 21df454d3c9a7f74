"""RunTracker: an epoch reported twice (train metrics, then its test metrics) is logged once per metric."""

import pytest

from repb_ray.config import Config

pytestmark = pytest.mark.slow


def test_an_asynchronously_evaluated_epoch_is_logged_once_per_metric(tmp_path):
    from mlflow.tracking import MlflowClient

    from repb_ray.tracking.run_tracker import RunTracker
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = Config(task="synthetic", name="twice", output_dir=str(tmp_path), tracking_uri=uri)
    tracker = RunTracker(cfg, log=lambda _: None)
    row = {"epoch": 1, "train_loss": 1.0, "kept": 10, "pruned_fraction": 0.0, "cum_pruned_fraction": 0.0,
           "eval_pending": True}
    tracker.epoch(row)
    done = {**row, "test_accuracy": 0.5}
    del done["eval_pending"]
    tracker.epoch(done)
    (tmp_path / "twice").mkdir()
    (tmp_path / "twice" / "summary.json").write_text("{}")
    tracker.finish(str(tmp_path / "twice" / "summary.json"), [done], None)
    client = MlflowClient(tracking_uri=uri)
    for key in ("train_loss", "kept", "test_accuracy"):
        assert [m.step for m in client.get_metric_history(tracker.run_id, key)] == [1], key
    assert "eval_pending" not in client.get_run(tracker.run_id).data.metrics
    # a resumed run (same MLflow run) does not log the epochs it already holds again
    again = RunTracker(cfg, resume_run_id=tracker.run_id, log=lambda _: None)
    again.epoch(done)
    again.finish(str(tmp_path / "twice" / "summary.json"), [done, {**done, "epoch": 2}], None)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "train_loss")] == [1, 2]


def test_the_fluent_tracking_uri_leaves_nothing_behind(tmp_path):
    """mlflow.set_tracking_uri also writes $MLFLOW_TRACKING_URI: left set, the next run of the process (and
    every process it starts) would track into that store instead of its own."""
    import os

    import mlflow

    from repb_ray.tracking.mlflow_tracking import fluent_tracking_uri
    before, env = mlflow.get_tracking_uri(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with fluent_tracking_uri(f"sqlite:///{tmp_path}/a.db"):
            assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/a.db"
        assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == before
        os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///elsewhere.db"
        with fluent_tracking_uri(f"sqlite:///{tmp_path}/b.db"):
            pass
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
