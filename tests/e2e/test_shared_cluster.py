"""Trust on a shared cluster, with the real command in its own processes: one driver per run (a second
one is refused naming the holder; a dead holder's run is taken over and resumed), a read-only HOME, a
credential in the tracking URI that reaches no file, log or MLflow param (a run, a sweep, and an
unreachable server), a sweep that resumes after SIGINT and after SIGKILL with every trial once, and a
tracking outage that never stops training."""

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import ROOT
from servers import cli, cli_popen, mlflow_server, read_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SMOKE = os.path.join(ROOT, "jobs", "configs", "smoke.yaml")
SWEEP = os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml")
SECRET = "Winter@2025!-zz9"  # an @ in the password: split at the last @, as urllib.parse does


@pytest.fixture(scope="module")
def address(ray_session):
    return ray_session.get_runtime_context().gcs_address


def test_a_second_driver_is_refused_and_a_dead_drivers_run_is_taken_over(address, tmp_path):
    argv = ["train", "--config", SMOKE, "--output-dir", str(tmp_path), "--set", "name=twin", "--set", "epochs=4",
            "--set", "tracking_uri=none"]
    first = cli_popen(argv, address, ROOT)
    try:
        read_until(first, "epoch 1/4:", timeout=300)
        os.killpg(first.pid, signal.SIGSTOP)  # the first driver stays alive (holding its lease) however slow the second
        second = cli(argv, address, ROOT, timeout=120)
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
        assert f"run 'twin' is being run by another driver (pid {first.pid} on host" in err[0] and f"kill {first.pid}" in err[0]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies (a killed job, a lost node)
        first.wait()
    third = cli(argv, address, ROOT, timeout=400)  # its holder is gone: taken over, resumed from the checkpoint
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resuming twin" in third.stdout
    with open(tmp_path / "twin" / "summary.json") as fh:
        assert [e["epoch"] for e in json.load(fh)["per_epoch"]] == [1, 2, 3, 4]


def test_a_read_only_home_does_not_stop_the_command(address, tmp_path):
    home = "/proc/repb-ray-home"  # not writable, even for root
    bad = cli(["train", "--config", SMOKE, "--set", "epochs=0"], address, ROOT, HOME=home)
    assert bad.returncode == 2 and bad.stderr.strip() == "repb-ray: error: epochs must be >= 1, got epochs=0"
    ok = cli(["prepare", "synthetic", "--out", str(tmp_path / "prepared")], address, ROOT, HOME=home)
    assert ok.returncode == 0, ok.stderr[-2000:]


def _files_holding(folder, needle: bytes) -> list[str]:
    hits = []
    for d, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(d, name)
            try:
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def test_a_credential_in_the_tracking_uri_reaches_no_file_log_or_param(address, tmp_path):
    from mlflow.tracking import MlflowClient

    from repb_ray import _ray_compat
    store = tmp_path / "server"
    store.mkdir()
    with mlflow_server(store) as (url, _):
        secret_uri = url.replace("http://", f"http://alice:{SECRET}@")
        out = tmp_path / "out"
        run = cli(["train", "--config", SMOKE, "--output-dir", str(out), "--set", "name=secret-run",
                   "--tracking-uri", secret_uri], address, ROOT, timeout=400)
        assert run.returncode == 0, run.stderr[-3000:]
        sweep = cli(["sweep", "--config", SWEEP, "--output-dir", str(out), "--tracking-uri", secret_uri,
                     "--set", "num_workers=1", "--set", "sweep.search={policy_args.rho: {grid: [0.5]}}",
                     "--set", "sweep.baselines=[{policy: full, max_failures: 0, fail_at: {epoch: 2, step: 0, rank: 0}}]"],
                    address, ROOT, timeout=600)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        with open(out / "sweep_smoke" / "sweep_summary.json") as fh:
            assert {t["policy"]: t["status"] for t in json.load(fh)["trials"]} == {"repb": "FINISHED", "full": "FAILED"}
        dead = cli(["train", "--config", SMOKE, "--output-dir", str(out), "--set", "name=dead-server",
                    "--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:9"], address, ROOT, timeout=120)
        assert dead.returncode == 2 and "tracking_uri='http://127.0.0.1:9' is not reachable" in dead.stderr
        client = MlflowClient(tracking_uri=url)
        runs = client.search_runs([client.get_experiment_by_name("repb_ray").experiment_id])
        assert len(runs) == 4  # the run, the sweep's parent and its 2 trials
        for r in runs:
            assert SECRET not in json.dumps({**r.data.params, **r.data.tags})
        failed = [r for r in runs if r.data.params.get("policy") == "full"]
        assert failed[0].info.status == "FAILED"  # recorded, not lost
        assert len(client.get_metric_history(failed[0].info.run_id, "test_accuracy")) == 1
        parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        assert os.listdir(store / "server-artifacts")  # the reports went through the server
    for proc in (run, sweep, dead):
        assert SECRET not in proc.stdout + proc.stderr and "2025!" not in proc.stdout + proc.stderr
    for needle in (SECRET.encode(), b"2025!-zz9"):  # neither whole nor the part after the @
        leaked = _files_holding(out, needle) + _files_holding(store, needle)
        leaked += _files_holding(os.path.join(_ray_compat.session_dir(), "logs"), needle)
        assert leaked == []


def test_a_sweep_resumes_after_sigint_and_after_sigkill_with_every_trial_once(address, tmp_path):
    from mlflow.tracking import MlflowClient
    argv = ["sweep", "--config", SWEEP, "--output-dir", str(tmp_path), "--set", "num_workers=1",
            "--set", "sweep.max_concurrent_trials=1"]
    first = cli_popen(argv, address, ROOT)
    read_first = read_until(first, "trial 1/3 finished", timeout=400)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=300) == 130
    done = sorted(os.listdir(tmp_path / "sweep_smoke" / "trials"))
    first_trial = next(d for d in done if os.path.exists(tmp_path / "sweep_smoke" / "trials" / d / "summary.json"))
    summary = tmp_path / "sweep_smoke" / "trials" / first_trial / "summary.json"
    stamp = os.stat(summary).st_mtime_ns
    second = cli_popen(argv, address, ROOT)
    read_until(second, "trial 2/3 finished", timeout=400)
    os.killpg(second.pid, signal.SIGKILL)  # a killed driver
    second.wait()
    time.sleep(3)
    third = cli(argv, address, ROOT, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-2000:]
    assert "resuming" in third.stdout and "trial 3/3 finished" in third.stdout
    for out in (third.stdout, "".join(read_first)):  # the sweep's own lines, not Tune's console
        assert "Configuration for experiment" not in out and "View detailed results" not in out, out[-2000:]
    assert os.stat(summary).st_mtime_ns == stamp  # the first finished trial was not trained again
    with open(tmp_path / "sweep_smoke" / "sweep_summary.json") as fh:
        s = json.load(fh)
    assert [t["status"] for t in s["trials"]] == ["FINISHED"] * 3
    assert [t["trial"] for t in s["trials"]] == ["t000-s0", "t001-s0", "t002-s0"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("repb_ray").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(c.data.tags["sweep_trial"] for c in children) == ["t000-s0", "t001-s0", "t002-s0"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert [t["method"] for t in s["trials"]] == ["RePB (rho=0.3)", "RePB (rho=0.7)", "Full data"]
    assert [t["budget"] for t in s["trials"]] == [None, None, 0.0]  # fixed knobs: placed where they reached
    assert "| Full data |" in (tmp_path / "sweep_smoke" / "paper_table.md").read_text()
    for c in children:
        for metric in ("test_accuracy", "train_loss", "kept", "pruned_fraction", "epoch_time_s", "weight_max"):
            assert [m.step for m in client.get_metric_history(c.info.run_id, metric)] == [1, 2], metric
        assert c.data.tags["git_commit"] and c.data.tags["policy"] == c.data.params["policy"]
        # a trial logs its model's weights (log_model auto), not an export that costs seconds per trial
        assert [a.path for a in client.list_artifacts(c.info.run_id, "model")] == ["model/model_state_dict.pt"]
    plots = [a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")]
    assert sorted(plots) == ["plots/knobs.png", "plots/metric_vs_pruned.png", "plots/pareto.png",
                             "plots/pruned_per_epoch.png"]
    assert "paper_table.md" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]


def test_a_tracking_outage_during_a_run_is_one_warning_and_training_goes_on(tmp_path, capsys):
    from repb_ray.config import Config
    from repb_ray.tracking.run_tracker import RunTracker
    store = tmp_path / "server"
    store.mkdir()
    with mlflow_server(store) as (url, proc):
        cfg = Config(task="synthetic", name="outage", output_dir=str(tmp_path), tracking_uri=url)
        tracker = RunTracker(cfg)
        rows = [{"epoch": 1, "train_loss": 1.0, "pruned_fraction": 0.0, "cum_pruned_fraction": 0.0},
                {"epoch": 2, "train_loss": 0.5, "pruned_fraction": 0.1, "cum_pruned_fraction": 0.05}]
        tracker.epoch(rows[0])
        assert tracker.logged_epochs == {1}
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t = time.perf_counter()
        tracker.epoch(rows[1])
        (tmp_path / "outage").mkdir()
        summary = tmp_path / "outage" / "summary.json"
        summary.write_text("{}")
        record = tracker.finish(str(summary), rows, None)
        assert time.perf_counter() - t < 120
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "warning: MLflow tracking failed" in ln]
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert "metrics of epochs [2]" in record["untracked"] and "summary.json" in record["untracked"]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_tree(root: int) -> dict[int, int]:
    """{pid: start time} of `root` and every process descended from it."""
    stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e))) is not None}
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return {pid: stats[pid][1] for pid in tree if pid in stats}


def _listening_addresses(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that these processes hold (from /proc)."""
    import socket as so
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table, family in (("/proc/net/tcp", so.AF_INET), ("/proc/net/tcp6", so.AF_INET6)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.append((so.inet_ntop(family, raw), int(port, 16)))
    return out


def _train_workers(pids) -> set[int]:
    """The Ray Train worker processes among `pids` (by their process title)."""
    out = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(b"ray::RayTrainWorker"):
                    out.add(pid)
        except OSError:
            continue
    return out


def test_the_private_local_ray_listens_on_loopback_only(tmp_path):
    """`repb-ray train` without a cluster: every listening socket of the driver and the Ray it started
    (GCS, raylet, dashboard, agents, actors, workers) is on 127.0.0.1, listed while the run trains. The one
    exception is torch's own: rank 0's TCPStore (the DDP rendezvous) binds every interface."""
    run = cli_popen(["train", "--config", SMOKE, "--output-dir", str(tmp_path), "--set", "name=local",
                     "--set", "epochs=3", "--set", "tracking_uri=none"], "", ROOT)
    tree: dict = {}
    try:
        read_until(run, "epoch 1/3:", timeout=300)
        tree = _process_tree(run.pid)
        workers = _train_workers(set(tree))
        addresses = _listening_addresses(set(tree) - workers)
        in_workers = [a for pid in workers for a in _listening_addresses({pid})]
    finally:
        os.killpg(run.pid, signal.SIGINT)  # the driver shuts its Ray down
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid, started in tree.items():  # what is left of its Ray (the same processes, not reused pids)
            st = _stat(pid)
            if st is not None and st[1] == started:
                os.kill(pid, signal.SIGKILL)
        run.wait()
    def loopback(a):
        return a.startswith("127.") or a in ("::1", "::ffff:127.0.0.1")
    assert len(addresses) >= 10, addresses  # the GCS, the raylet, the dashboard and agents, actors, the driver
    assert all(loopback(a) for a, _ in addresses), addresses
    assert len(workers) == 2 and len(in_workers) >= 4, in_workers
    assert len([a for a, _ in in_workers if not loopback(a)]) <= 1, in_workers  # rank 0's TCPStore at most
