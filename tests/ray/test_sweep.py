"""Smoke sweeps under Ray Tune, tracked in MLflow: SQLite store and a real `mlflow server`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import ROOT

from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.sweep import run_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SWEEP = os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml")


def _runs(uri, experiment="repb_ray"):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    return client, parent[0], children


def test_smoke_sweep_sqlite(ray_session, tmp_path, capsys):
    spec = SweepSpec.from_yaml(SWEEP, ["num_workers=1", f"output_dir={tmp_path}"])
    summary = run_sweep(spec)
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ": trial " in ln]
    assert [ln.split(": trial ")[1].split(" ")[0] for ln in progress] == ["1/3", "2/3", "3/3"], progress
    assert [r["status"] for r in summary["trials"]] == ["FINISHED"] * 3
    assert [r["method"] for r in summary["trials"]] == ["RePB (rho=0.3)", "RePB (rho=0.7)", "Full data"]
    assert [r["budget"] for r in summary["trials"]] == [None, None, 0.0]  # fixed knobs: placed where they reached
    with open(tmp_path / "sweep_smoke" / "sweep_summary.json") as fh:
        assert json.load(fh)["pareto_front"] == summary["pareto_front"]
    assert "| Full data |" in (tmp_path / "sweep_smoke" / "paper_table.md").read_text()
    client, parent, children = _runs(summary["mlflow_tracking_uri"])
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert sorted((c.data.params["policy"], json.loads(c.data.params["policy_args"]).get("rho", 0)) for c in children) \
        == [("full", 0), ("repb", 0.3), ("repb", 0.7)]
    for c in children:
        assert c.info.status == "FINISHED"
        for metric in ("test_accuracy", "train_loss", "kept", "pruned_fraction", "epoch_time_s", "weight_max"):
            assert [m.step for m in client.get_metric_history(c.info.run_id, metric)] == [1, 2], metric
        assert c.data.tags["git_commit"] and c.data.tags["policy"] == c.data.params["policy"]
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert sorted(plots) == ["plots/knobs.png", "plots/metric_vs_pruned.png", "plots/pareto.png",
                             "plots/pruned_per_epoch.png"]
    assert "paper_table.md" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    local = client.download_artifacts(parent.info.run_id, "plots/pareto.png", str(tmp_path))
    with open(local, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not become healthy in 60 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_sweep_against_mlflow_server_records_failed_trial(ray_session, tmp_path, mlflow_server):
    spec = SweepSpec.from_yaml(SWEEP, [
        "num_workers=1", f"output_dir={tmp_path / 'out'}", f"tracking_uri={mlflow_server}",
        "sweep.search={policy_args.rho: {grid: [0.5]}}",
        "sweep.baselines=[{policy: full, fail_at: {epoch: 2, step: 0, rank: 0}}]"])
    summary = run_sweep(spec)
    status = {r["policy"]: r["status"] for r in summary["trials"]}
    assert status == {"repb": "FINISHED", "full": "FAILED"}
    client, parent, children = _runs(mlflow_server)
    by_policy = {c.data.params["policy"]: c for c in children}
    assert by_policy["repb"].info.status == "FINISHED"
    assert by_policy["full"].info.status == "FAILED"           # recorded, not lost
    assert len(client.get_metric_history(by_policy["full"].info.run_id, "test_accuracy")) == 1
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert os.listdir(tmp_path / "server-artifacts")             # artifacts went through the server
