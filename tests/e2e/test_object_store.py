"""Runs whose one home is a bucket of an S3 API server on 127.0.0.1 (moto, conditional writes included),
with the real command in its own processes and pyarrow's `?endpoint_override=` URI form: checkpoints on
the bucket and a killed driver resumed from them with the uninterrupted plans and losses, two runs side
by side, two drivers with their own output folders (the second refused while the first lives, the first
intact), two sweeps on one bucket, `sweep --overwrite` clearing its own trials only, and training data
read from the bucket."""

import json
import os
import signal

import numpy as np
import pytest
from helpers import ROOT
from servers import cli, cli_popen, read_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SMOKE = os.path.join(ROOT, "jobs", "configs", "smoke.yaml")
SWEEP = os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml")


@pytest.fixture(scope="module")
def address(s3, ray_session):
    return ray_session.get_runtime_context().gcs_address


def _train(store, out, name, *extra):
    return ["train", "--config", SMOKE, "--output-dir", str(out), "--set", f"name={name}", "--set", "epochs=3",
            "--set", "tracking_uri=none", "--set", f"storage_path={store}", *extra]


def _summary(out, name):
    with open(out / name / "summary.json") as fh:
        return json.load(fh)


def test_a_killed_driver_resumes_from_the_bucket_with_the_uninterrupted_plans_and_losses(address, s3, tmp_path):
    store = s3.uri("team", "runs")
    ref = cli(_train(store, tmp_path / "a", "ref"), address, ROOT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    victim = cli_popen(_train(store, tmp_path / "b", "victim"), address, ROOT)
    try:
        read_until(victim, "epoch 2/3:", timeout=300)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the driver dies mid-run (a killed job, a lost node)
        victim.wait()
    again = cli(_train(store, tmp_path / "b", "victim"), address, ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming victim" in again.stdout
    a, b = _summary(tmp_path / "a", "ref"), _summary(tmp_path / "b", "victim")
    assert [e["plan_digest"] for e in b["per_epoch"]] == [e["plan_digest"] for e in a["per_epoch"]]
    assert [e["train_loss"] for e in b["per_epoch"]] == [e["train_loss"] for e in a["per_epoch"]]
    keys = s3.keys("team")
    for name in ("ref", "victim"):  # two runs side by side: each its own objects under its own prefix
        assert f"runs/{name}/repb_run.json" in keys and f"runs/{name}/_owner/g000001.json" in keys
        assert any(k.startswith(f"runs/{name}/coordinator/epoch_") for k in keys)
        assert any(k.startswith(f"runs/{name}/epoch_") for k in keys)
    assert "runs/victim/_owner/g000002.json" in keys  # the second driver succeeded the first
    assert not any(k == "runs" or k.startswith("runs?") for k in keys)
    assert not (tmp_path / "b" / "ray_results").exists()  # the output folder holds what a person reads


def test_a_second_driver_with_its_own_output_folder_is_refused_and_the_first_stays_intact(address, s3, tmp_path):
    store = s3.uri("shared-team", "runs")
    first = cli_popen(_train(store, tmp_path / "alice", "shared"), address, ROOT)
    try:
        read_until(first, "epoch 1/3:", timeout=300)
        os.killpg(first.pid, signal.SIGSTOP)  # alive, holding the run, however slow the second
        second = cli(_train(store, tmp_path / "bob", "shared"), address, ROOT, timeout=120)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
        assert f"run 'shared' is being run by another driver (pid {first.pid} on host" in err[0]
        assert "resuming" not in second.stdout and not (tmp_path / "bob" / "shared" / "summary.json").exists()
        os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=400) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    s = _summary(tmp_path / "alice", "shared")
    assert [e["epoch"] for e in s["per_epoch"]] == [1, 2, 3]
    assert s3.keys("shared-team", "runs/shared/_owner/") == ["runs/shared/_owner/g000001.beat.json",
                                                             "runs/shared/_owner/g000001.json"]


def test_two_sweeps_on_one_bucket_keep_their_trials_apart_and_overwrite_clears_only_its_own(address, s3, tmp_path):
    store = s3.uri("sweeps", "team")
    args = ["--set", "tracking_uri=none", "--set", f"storage_path={store}", "--set", "num_workers=1",
            "--set", "sweep.search={policy_args.rho: {grid: [0.5]}}", "--set", "sweep.baselines=[]"]  # a trial each
    for name, out in (("sw-a", tmp_path / "x"), ("sw-b", tmp_path / "y")):
        p = cli(["sweep", "--config", SWEEP, "--output-dir", str(out), "--set", f"sweep.name={name}", *args], address,
                ROOT, timeout=900)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    keys = s3.keys("sweeps")
    for name in ("sw-a", "sw-b"):  # each sweep's trials under its own home
        assert f"team/{name}/repb_sweep.json" in keys and f"team/{name}/t000-s0/repb_run.json" in keys
    b_before = [k for k in keys if k.startswith("team/sw-b/")]
    a_record = s3.keys("sweeps", "team/sw-a/t000-s0/repb_run.json")
    p = cli(["sweep", "--config", SWEEP, "--output-dir", str(tmp_path / "x"), "--set", "sweep.name=sw-a",
             "--overwrite", *args], address, ROOT, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "resuming" not in p.stdout  # its trials trained again, not restored from the old checkpoints
    with open(tmp_path / "x" / "sw-a" / "sweep_summary.json") as fh:
        assert [t["status"] for t in json.load(fh)["trials"]] == ["FINISHED"]
    assert a_record and [k for k in s3.keys("sweeps") if k.startswith("team/sw-b/")] == b_before


def test_training_data_read_from_the_bucket(address, s3, tmp_path):
    """The README's task over Parquet files on the bucket (the query-string URI reaches every file)."""
    import pyarrow.fs
    from helpers import doc_block

    from repb_ray.data import prepare_arrays
    (tmp_path / "my_task.py").write_text(doc_block("task"))
    rng = np.random.default_rng(0)
    data = s3.uri("data", "sets")
    fs, root = pyarrow.fs.FileSystem.from_uri(data)
    for split, n in (("train", 160), ("test", 64)):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        prepare_arrays({"features": x, "label": (x[:, 0] > 0).astype(np.int64)}, str(tmp_path / split), rows_per_file=32)
        pyarrow.fs.copy_files(str(tmp_path / split), f"{root}/{split}", destination_filesystem=fs)
    train, test = data.replace("sets?", "sets/train?"), data.replace("sets?", "sets/test?")
    p = cli(["train", "--config", SMOKE, "--set", "task=my_task:MyTask", "--set", "name=from-bucket",
             "--output-dir", str(tmp_path / "out"), "--set", "tracking_uri=none", "--set", f"task_args.train={train}",
             "--set", f"task_args.test={test}"], address, str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(tmp_path / "out", "from-bucket")
    assert s["num_samples"] == 160 and s["epochs"] == 2 and s["final_metric"] > 0.6
