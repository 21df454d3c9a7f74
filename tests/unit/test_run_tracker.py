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
