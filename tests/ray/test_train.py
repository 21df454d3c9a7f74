"""Integration on local Ray: 2 DDP workers on exact plans, CTR weights as decided, exact resume."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT

from repb_ray import layout, storage
from repb_ray.cli import main as cli_main
from repb_ray.config import Config
from repb_ray.core import plan_digest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


REF_MODEL = "task_args.model=mlp_bn"  # BatchNorm: every rank's running statistics differ at an epoch's end


@pytest.fixture(scope="module")
def reference_run(ray_session, smoke_config, tmp_path_factory):
    """The smoke config through the CLI: 2 workers x 3 epochs, audited, tracked in SQLite MLflow."""
    out = tmp_path_factory.mktemp("ref")
    rc = cli_main(["train", "--config", smoke_config, "--output-dir", str(out),
                   "--set", "epochs=3", "--set", "audit=true", "--set", "name=ref", "--set", REF_MODEL])
    assert rc == 0
    with open(out / "ref" / "summary.json") as fh:
        return out, json.load(fh)


def test_summary_has_every_field(reference_run):
    _, s = reference_run
    for key in ("config", "task", "task_args", "policy", "seed", "num_workers", "epochs", "final_test_accuracy",
                "best_test_accuracy", "metric", "final_metric", "pruned_fraction", "samples_trained", "wall_time_s",
                "per_epoch"):
        assert key in s, key
    assert s["epochs"] == 3 and s["num_workers"] == 2 and s["policy"] == "repb"
    assert s["task"] == "synthetic" and s["task_args"] == {"size": 256, "model": "mlp_bn"} and s["metric"] == "test_accuracy"
    assert {"epoch", "kept", "pruned_fraction", "train_loss", "test_accuracy", "test_loss", "epoch_time_s",
            "train_time_s", "data_wait_s", "weight_mean", "weight_max", "plan_digest"} <= set(s["per_epoch"][0])
    kept = [e["kept"] for e in s["per_epoch"]]
    assert s["samples_trained"] == sum(kept)
    assert s["pruned_fraction"] == pytest.approx(1 - sum(kept) / (3 * 256))
    assert kept[0] == 256 and kept[1] < 256  # D_1 = D, then pruning
    # every boundary is measured (last step of an epoch to the first of the next, slowest rank)
    assert "boundary_stall_s" not in s["per_epoch"][0]
    assert all(e["boundary_stall_s"] >= 0 and "boundary_decision_s" in e and e["boundary_reads_waiting"] >= 0
               for e in s["per_epoch"][1:])
    assert s["boundary_stall_s"]["max"] == max(e["boundary_stall_s"] for e in s["per_epoch"][1:])
    assert not any("eval_pending" in e for e in s["per_epoch"])
    # where the wall time went: the phases add up to it, each took time, training is within the epochs
    t = s["time_s"]
    assert set(t) == {"setup_s", "workers_start_s", "worker_setup_s", "epochs_s", "training_s", "rest_of_fit_s",
                      "finish_s"}
    assert sum(v for k, v in t.items() if k != "training_s") == pytest.approx(s["wall_time_s"], abs=0.5)
    assert all(v > 0 for v in t.values()) and t["training_s"] < t["epochs_s"]
    from repb_ray.code_version import code_version
    assert s["code"] == code_version()  # the code this run ran (its driver is this process)


def test_async_evaluation_reports_what_the_synchronous_path_does(reference_run, smoke_config, tmp_path):
    """Evaluating epoch E while E+1 trains changes nothing but when the metrics arrive: the same plans,
    losses and test metrics, each for its own epoch."""
    from repb_ray.train.driver import run_training
    _, ref = reference_run
    assert ref["eval_mode"] == "async"  # eval_mode auto
    cfg = Config.from_yaml(smoke_config, ["epochs=3", f"output_dir={tmp_path}", "tracking_uri=none", REF_MODEL])
    s = run_training(cfg.replace(name="other", eval_mode="sync"), progress=False)
    assert s["eval_mode"] == "sync"
    for key in ("plan_digest", "train_loss", "test_accuracy", "test_loss"):
        assert [e[key] for e in s["per_epoch"]] == [e[key] for e in ref["per_epoch"]], key


def test_evaluating_every_second_epoch_changes_only_which_epochs_are_evaluated(reference_run, smoke_config, tmp_path):
    """eval_every=2 over 3 epochs (asynchronous): epoch 1 is not evaluated (no test metrics, nothing pending),
    epochs 2 and 3 are (every second and the last); the plans, losses and those test metrics are the
    reference run's, and the final and best metrics come from the evaluated epochs."""
    from repb_ray.train.driver import run_training
    _, ref = reference_run
    cfg = Config.from_yaml(smoke_config, ["epochs=3", f"output_dir={tmp_path}", "tracking_uri=none", REF_MODEL,
                                          "eval_every=2", "eval_mode=async"])
    s = run_training(cfg.replace(name="every2"), progress=False)
    for key in ("plan_digest", "train_loss"):
        assert [e[key] for e in s["per_epoch"]] == [e[key] for e in ref["per_epoch"]], key
    assert [sorted(k for k in e if k.startswith("test_")) for e in s["per_epoch"]] == [[], ["test_accuracy", "test_loss"],
                                                                                     ["test_accuracy", "test_loss"]]
    for e, r in zip(s["per_epoch"][1:], ref["per_epoch"][1:]):
        assert (e["test_accuracy"], e["test_loss"]) == (r["test_accuracy"], r["test_loss"])
    assert s["final_metric"] == ref["final_metric"]
    assert s["best_test_accuracy"] == max(e["test_accuracy"] for e in s["per_epoch"][1:])


def test_ranks_see_disjoint_equal_shares_whose_union_is_the_plan(reference_run):
    out, s = reference_run
    audit = out / "ref" / "audit"
    for e in s["per_epoch"]:
        ep = e["epoch"]
        plan = np.load(audit / f"plan{ep:03d}.npz")
        ranks = [np.load(audit / f"epoch{ep:03d}_rank{r}.npz") for r in (0, 1)]
        ids = [r["ids"] for r in ranks]
        assert len(ids[0]) == len(ids[1])                                   # equal rows per rank
        assert ranks[0]["steps"].max() == ranks[1]["steps"].max()           # equal DDP steps
        assert not np.intersect1d(ids[0], ids[1]).size                      # disjoint
        union = np.sort(np.concatenate(ids))
        np.testing.assert_array_equal(union, plan["ids"])                   # exactly the plan
        assert plan_digest(union) == e["plan_digest"]
        weight_of = dict(zip(plan["ids"].tolist(), plan["weights"].tolist()))
        applied = [weight_of[i] == w for r in ranks for i, w in zip(r["ids"].tolist(), r["weights"].tolist())]
        assert all(applied)                                                 # the coordinator's CTR weights


def test_training_run_is_tracked_in_mlflow(reference_run):
    from mlflow.tracking import MlflowClient
    out, s = reference_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["policy"] == "repb"
    assert run.data.params["task"] == "synthetic" and run.data.params["task_args"] == '{"model": "mlp_bn", "size": 256}'
    for key in ("test_accuracy", "train_loss"):  # each epoch once (an async epoch is reported twice)
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert {"summary.json", "plots", "selection_counts.npz"} <= set(names)
    (out / "logged").mkdir(exist_ok=True)
    with open(client.download_artifacts(run.info.run_id, "summary.json", str(out / "logged"))) as fh:
        logged_summary = json.load(fh)
    assert logged_summary["time_s"] == s["time_s"] and logged_summary["tracking"] == s["tracking"]  # the final one
    counts = np.load(client.download_artifacts(run.info.run_id, "selection_counts.npz", str(out)))["counts"]
    # N_i over the plans so far (the 4th epoch's, decided after epoch 3, included)
    assert counts.shape == (256,) and counts.min() >= 1 and counts.max() <= 4
    assert int(counts.sum()) > s["samples_trained"]
    import mlflow.pytorch
    import torch
    logged = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    from repb_ray.tracking.mlflow_tracking import fluent_tracking_uri
    with fluent_tracking_uri(f"sqlite:///{out}/mlflow.db"):  # nothing of it left in this process's environment
        model = mlflow.pytorch.load_model(f"models:/{logged[0].model_id}")
    assert model(torch.zeros(2, 16)).shape == (2, 4)
    assert logged[0].name == "model"


def test_the_tracked_run_says_what_it_trained_on(reference_run):
    """MLflow's datasets: the train and test data (rows, schema, digest) and each epoch's plan (its digest and
    kept count, as in the summary); the model's test metric tied to the test data; system metrics on."""
    import json

    from mlflow.tracking import MlflowClient
    out, s = reference_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    run = client.get_run(s["mlflow_run_id"])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    train, test = inputs["synthetic-train"], inputs["synthetic-test"]
    assert json.loads(train.dataset.profile)["num_rows"] == 256 and json.loads(test.dataset.profile)["num_rows"] > 0
    assert {c["name"] for c in json.loads(train.dataset.schema)["columns"]} >= {"id", "x", "y"}
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    for e in s["per_epoch"]:
        plan = inputs[f"synthetic-train-plan-{e['epoch']:03d}"].dataset
        assert json.loads(plan.source)["plan_digest"] == e["plan_digest"]
        assert json.loads(plan.profile)["num_rows"] == e["kept"]
    logged = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    linked = [m for m in logged[0].metrics if m.dataset_name == "synthetic-test"]
    assert linked and linked[0].key == "final_test_accuracy" and linked[0].dataset_digest == test.dataset.digest
    assert linked[0].value == s["final_test_accuracy"] and linked[0].step == 3
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)


@pytest.mark.parametrize("fail_at,shards,every", [({"epoch": 2, "step": 3, "rank": 1}, 1, 2),
                                                  ({"epoch": 2, "step": 2, "rank": 0, "kind": "coordinator"}, 1, 0),
                                                  ({"epoch": 2, "step": 2, "rank": 0, "kind": "shard"}, 2, 0)],
                         ids=["worker-failure-mid-epoch", "coordinator-killed", "shard-process-killed"])
def test_resume_gives_the_uninterrupted_plans(reference_run, smoke_config, tmp_path, fail_at, shards, every):
    """A crashed worker, or the coordinator's or one shard actor's process killed by pid mid-epoch: the
    run resumes from its last checkpoint (within the epoch, with checkpoint_every_steps: the observations
    of its first steps restored and the data read from where it was) and ends with the clean run's plans
    and losses, bit for bit (plans do not depend on the number of shards); the summary says where."""
    from repb_ray.train.driver import run_training
    _, ref = reference_run
    cfg = Config.from_yaml(smoke_config, ["epochs=3", f"output_dir={tmp_path}", "tracking_uri=none", REF_MODEL])
    s = run_training(cfg.replace(name="resumed", fail_at=fail_at, max_failures=2, coordinator_shards=shards,
                                 checkpoint_every_steps=every, eval_mode="async"), progress=False)
    assert os.path.exists(tmp_path / "resumed" / f".injected_{fail_at.get('kind', 'worker')}_e2_s{fail_at['step']}_r{fail_at['rank']}")
    assert [e["plan_digest"] for e in s["per_epoch"]] == [e["plan_digest"] for e in ref["per_epoch"]]
    assert [e["train_loss"] for e in s["per_epoch"]] == [e["train_loss"] for e in ref["per_epoch"]]
    # epoch 1's evaluation was pending in the checkpoint resumed from: completed from its weights, and each
    # rank's own BatchNorm statistics
    assert [e["test_loss"] for e in s["per_epoch"]] == [e["test_loss"] for e in ref["per_epoch"]]
    assert s["restarts"] == [{"epoch": 2, "step": every, "world_size_before": 2, "world_size": 2}]


def test_a_checkpoint_within_an_epoch_resumed_at_another_world_size_goes_back_to_the_epochs_start(
        ray_session, smoke_config, tmp_path, capsys):
    """2 workers fail after a checkpoint at step 2 of epoch 2 (no retries left); resumed on 1 worker (local mode),
    the run goes back to the checkpoint at epoch 1's end, kept for this: the position of the other cannot be
    continued at another world size. Epoch 2's plan is the one decided after epoch 1; the console and the
    summary say where the run resumed."""
    base = ["train", "--config", smoke_config, "--output-dir", str(tmp_path), "--set", "name=shrink",
            "--set", "tracking_uri=none", "--set", "epochs=3", "--set", "checkpoint_every_steps=2"]
    assert cli_main(base + ["--set", "max_failures=0", "--set", "fail_at={epoch: 2, step: 3, rank: 1}"]) == 1
    home = tmp_path / "ray_results" / "shrink"
    assert {"epoch_001", "epoch_002_attempt_000_step_000002"} <= set(os.listdir(home))
    plan2 = storage.load_npz(str(home / "coordinator" / "epoch_00001" / "global.npz"))[1]["plan_sizes"][-1]
    capsys.readouterr()
    assert cli_main(base + ["--set", "num_workers=1", "--resume"]) == 0
    assert ("resumed at epoch 2 on 1 worker(s) (was 2); the checkpoint at step 2 continues only on 2 worker(s), so "
            "the epoch starts over from its first step") in capsys.readouterr().out
    with open(tmp_path / "shrink" / "summary.json") as fh:
        s = json.load(fh)
    assert [e["epoch"] for e in s["per_epoch"]] == [1, 2, 3] and s["per_epoch"][1]["kept"] == plan2
    assert s["restarts"] == [{"epoch": 2, "step": 0, "world_size_before": 2, "world_size": 1}]


def test_a_failure_that_repeats_is_said_once_not_retried(ray_session, smoke_config, tmp_path):
    """The same error at the same step in two attempts in a row: the run ends at the second, with one line
    naming the step and the error (not max_failures retries of it)."""
    from repb_ray.errors import RunError
    from repb_ray.train.driver import run_training
    cfg = Config.from_yaml(smoke_config, [f"output_dir={tmp_path}", "tracking_uri=none", "num_workers=1",
                                          "max_failures=5", "epochs=1"])
    t = time.perf_counter()
    with pytest.raises(RunError) as err:
        run_training(cfg.replace(name="repeats", fail_at={"epoch": 1, "step": 1, "every_attempt": True}),
                     progress=False)
    assert str(err.value) == ("run 'repeats' failed twice at epoch 1, step 1 with the same error (RuntimeError: "
                              "injected failure at epoch 1, step 1, rank 0 (fail_at)); not retried again: fix the "
                              "cause, then continue the run with --resume")
    print(f"two attempts in {time.perf_counter() - t:.1f}s")


def test_elastic_workers_start_with_what_the_cluster_has(ray_session, smoke_config, tmp_path):
    """num_workers [1, 2] where only one worker's CPUs are free: the run starts with one worker, the plan
    made for two is re-trimmed for one, and every epoch says which world size trained it."""
    from repb_ray.train.driver import run_training
    cfg = Config.from_yaml(smoke_config, [f"output_dir={tmp_path}", "tracking_uri=none", "epochs=3"])
    s = run_training(cfg.replace(name="elastic", num_workers=[1, 2], cpus_per_worker=3), progress=False)
    assert [e["world_size"] for e in s["per_epoch"]] == [1, 1, 1]
    assert s["num_workers"] == [1, 2] and s["per_epoch"][0]["kept"] == 256


def test_local_mode_runs_every_policy_in_one_harness(ray_session, smoke_config, tmp_path):
    from repb_ray.train.driver import run_training
    cfg = Config.from_yaml(smoke_config, [f"output_dir={tmp_path}", "tracking_uri=none", "num_workers=0"])
    pruned = {}
    for policy in ("infobatch", "random", "full", "egreedy", "ucb", "orderdp"):
        s = run_training(cfg.replace(name=policy, policy=policy, policy_args={}), progress=False)
        assert s["epochs"] == 2 and s["policy"] == policy
        pruned[policy] = s["pruned_fraction"]
    assert pruned["full"] == 0.0 and pruned["random"] == pytest.approx(0.5) and pruned["ucb"] == 0.25
    assert pruned["orderdp"] == 0.25  # epoch 1 full, then half


def test_cli_rejects_bad_config_with_exit_code_2(smoke_config, tmp_path):
    cases = [(["--set", "policy_args.rh=0.3"], "unknown parameter 'rh' for policy 'repb' (did you mean 'rho'?)"),
             (["--set", "policy_args.rho=1.5"], "rho must be in [0, 1], got rho=1.5"),
             (["--set", "policy=infobach"], "did you mean 'infobatch'?"),
             (["--set", "epochs=0"], "epochs must be >= 1, got epochs=0")]
    for extra, msg in cases:
        p = subprocess.run([sys.executable, "-m", "jobs.train", "--config", smoke_config, *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], p.stderr
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_rerun_with_the_same_name_resumes_from_the_last_checkpoint(reference_run, smoke_config, capsys):
    """A driver that died is recovered by running again with the same name: Train finds the run's
    checkpoints and the coordinator is restored from the last one. Asking for more epochs changes
    the config: refused up front, then continued with --resume."""
    out, ref = reference_run
    argv = ["train", "--config", smoke_config, "--output-dir", str(out), "--set", "epochs=4", "--set", "name=ref",
            "--set", "tracking_uri=none", "--set", REF_MODEL]
    assert cli_main(argv) == 2
    assert "was started with another config (epochs: 3 -> 4)" in capsys.readouterr().err
    rc = cli_main(argv + ["--resume"])
    assert rc == 0
    with open(out / "ref" / "summary.json") as fh:
        s = json.load(fh)
    assert [e["epoch"] for e in s["per_epoch"]] == [1, 2, 3, 4]
    assert [e["plan_digest"] for e in s["per_epoch"][:3]] == [e["plan_digest"] for e in ref["per_epoch"]]
    assert s["per_epoch"][3]["kept"] > 0


def test_resume_on_another_worker_count_retrims_the_plan(ray_session, smoke_config, tmp_path, capsys):
    """1 worker for 2 epochs, then --resume with 2 workers and a third epoch: the restored plan is
    re-trimmed to an even size, the first epochs stay as they were, the run's record notes the change."""
    base = ["train", "--config", smoke_config, "--output-dir", str(tmp_path), "--set", "name=grow",
            "--set", "tracking_uri=none", "--set", "task_args.size=209"]
    assert cli_main(base + ["--set", "num_workers=1"]) == 0
    with open(tmp_path / "grow" / "summary.json") as fh:
        first = json.load(fh)
    from repb_ray import storage
    saved = tmp_path / "ray_results" / "grow" / "coordinator" / "epoch_00002" / "global.npz"
    assert storage.load_npz(str(saved))[1]["plan_sizes"][-1] % 2 == 1  # the case needs the re-trim
    assert cli_main(base + ["--set", "num_workers=2", "--set", "epochs=3"]) == 2
    assert "num_workers: 1 -> 2" in capsys.readouterr().err
    assert cli_main(base + ["--set", "num_workers=2", "--set", "epochs=3", "--resume"]) == 0
    with open(tmp_path / "grow" / "summary.json") as fh:
        s = json.load(fh)
    assert [e["plan_digest"] for e in s["per_epoch"][:2]] == [e["plan_digest"] for e in first["per_epoch"]]
    assert s["per_epoch"][2]["kept"] % 2 == 0 and s["num_workers"] == 2
    assert s["restarts"] == [{"epoch": 3, "step": 0, "world_size_before": 1, "world_size": 2}]
    with open(tmp_path / "ray_results" / "grow" / "repb_run.json") as fh:
        assert any("num_workers: 1 -> 2" in c for r in json.load(fh)["resumed_with"] for c in r["changes"])


def test_a_run_in_a_trial_thread_that_is_taken_over_stops_and_deletes_nothing(ray_session, smoke_config, tmp_path):
    """A sweep trial's driver is a thread, not the main thread: when another driver takes its run over,
    its heartbeat still stops the run (the coordinator goes, the workers fail fast), the error says why,
    and nothing of the new owner's is deleted."""
    import threading

    from repb_ray import storage
    from repb_ray.errors import OwnershipLost
    from repb_ray.train import run_home
    from repb_ray.train.driver import run_training
    from repb_ray.train.ownership import HEARTBEAT_ENV, STALE_ENV, claim_path
    cfg = Config.from_yaml(smoke_config, ["epochs=30", f"output_dir={tmp_path}", "tracking_uri=none", "name=stolen"])
    home = run_home.home_of(cfg)
    outcome = {}
    os.environ.update({HEARTBEAT_ENV: "0.2", STALE_ENV: "5"})
    try:
        def trial():
            try:
                outcome["summary"] = run_training(cfg, progress=False)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc
        t = threading.Thread(target=trial)
        t.start()
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(home, "coordinator", "epoch_00002")) and t.is_alive():
            assert time.time() < deadline, "the run never saved epoch 2"
            time.sleep(0.1)
        assert storage.create_exclusive(claim_path(home, 2), b'{"host": "node-7", "pid": 1}')  # taken over
        t.join(120)
    finally:
        for key in (HEARTBEAT_ENV, STALE_ENV):
            os.environ.pop(key, None)
    assert not t.is_alive() and "summary" not in outcome
    assert isinstance(outcome["error"], OwnershipLost) and "taken over by another driver" in str(outcome["error"])
    assert os.path.exists(os.path.join(home, layout.RECORD_FILE)) and os.path.exists(claim_path(home, 2))
    assert any(e.startswith("epoch_") for e in os.listdir(home))  # checkpoints kept
