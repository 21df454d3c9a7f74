"""End to end on a real multi-node Ray cluster on this machine: a head and two worker nodes on
127.0.0.1 with token auth, the Train workers placed on the worker nodes (custom resource
`trainer`), jobs submitted with `ray job submit`: a training run told of a preemption and then losing
both worker nodes mid-epoch (its checkpoints and states on an S3 API server, its outputs in a folder of
the driver's own), an elastic run that shrinks when a node goes and grows when it comes back, a task
module from the submitted working directory, and a small sweep."""

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")


# Every port a node is given lies below Linux's ephemeral range (32768-60999), so no connection made
# after it was chosen can take it: the named ports from 20000 up, each node's worker ports from 29000.
WORKER_PORTS = [(29000 + 1000 * i, 29999 + 1000 * i) for i in range(3)]


def _free_ports(k):
    """k distinct ports in 20000-28999 that are free right now (Ray refuses a node whose named ports
    overlap its worker port range; connections never pick ports outside the ephemeral range)."""
    ports = []
    for port in range(20000 + 100 * (os.getpid() % 80), 29000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == k:
            return ports
    raise RuntimeError(f"fewer than {k} free ports in 20000-28999")


def _kill(proc):
    """A node's `ray start --block` and every process in its group, killed at once."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _start(args, env, log):
    with open(log, "w") as fh:
        return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Three `ray start` processes, every port explicit (another Ray on this machine holds the defaults);
    every node reaches the S3 API server with the usual credential variables."""
    tmp = tmp_path_factory.mktemp("cluster")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    os.chmod(token, 0o600)
    home = tmp / "home"  # an empty HOME: no ~/.ray/auth_token to fall back on
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    base.update(HOME=str(home), PATH=BIN + os.pathsep + os.environ.get("PATH", ""), **s3.env)
    env = dict(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
               RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5")
    gcs, dash, *p = _free_ports(21)
    temp_dir = f"/tmp/rmn{os.getpid()}"
    procs = [_start(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                     "--include-dashboard=true", "--num-cpus=1", f"--temp-dir={temp_dir}",
                     f"--dashboard-agent-listen-port={p[0]}", f"--dashboard-agent-grpc-port={p[1]}",
                     f"--metrics-export-port={p[2]}", f"--runtime-env-agent-port={p[3]}",
                     f"--ray-client-server-port={p[4]}", f"--object-manager-port={p[5]}",
                     f"--node-manager-port={p[6]}", f"--min-worker-port={WORKER_PORTS[0][0]}",
                     f"--max-worker-port={WORKER_PORTS[0][1]}"], env,
                   tmp / "head.log")]
    url = f"http://127.0.0.1:{dash}"
    workers, running = {}, {}  # node index -> the arguments of its `ray start`, its process

    def start_worker(i):
        running[i] = _start(workers[i], env, tmp / f"worker{i}.log")
        procs.append(running[i])

    def stop_worker(i):
        """The node's processes killed at once, as when its machine is reclaimed."""
        proc = running.pop(i)
        _kill(proc)
        procs.remove(proc)
        subprocess.run(["pkill", "-9", "-f", f"{temp_dir}-w{i}"], check=False)

    try:
        _wait(url, procs[0])
        for i in (1, 2):
            q = p[7 + 6 * (i - 1): 13 + 6 * (i - 1)]
            workers[i] = [f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"trainer": 1}',
                          f"--temp-dir={temp_dir}-w{i}",  # each node its own disk, as on separate machines
                          f"--dashboard-agent-listen-port={q[0]}", f"--dashboard-agent-grpc-port={q[1]}",
                          f"--metrics-export-port={q[2]}", f"--runtime-env-agent-port={q[3]}",
                          f"--object-manager-port={q[4]}", f"--node-manager-port={q[5]}",
                          f"--min-worker-port={WORKER_PORTS[i][0]}", f"--max-worker-port={WORKER_PORTS[i][1]}"]
            start_worker(i)
            time.sleep(3)
        nodes = []
        for _ in range(120):
            nodes = _nodes(url, token.read_text().strip())
            if len([n for n in nodes if n.get("state") == "ALIVE"]) == 3:
                break
            time.sleep(1)
        assert len(nodes) == 3, [open(tmp / f).read()[-2000:] for f in ("worker1.log", "worker2.log")]
        shared = tmp / "shared"
        yield {"url": url, "env": env, "no_token_env": base, "token": token.read_text().strip(), "shared": shared, "s3": s3,
               "head": next(n["node_id"] for n in nodes if n["is_head_node"]), "gcs": f"127.0.0.1:{gcs}",
               "start_worker": start_worker, "stop_worker": stop_worker}
    finally:
        for proc in procs:  # killed, as stop_worker kills a node: a graceful `ray stop` waits ~30 s per node here
            with contextlib.suppress(ProcessLookupError):  # its group has gone already
                _kill(proc)
        subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)  # any process of the nodes outside their groups
        for d in (temp_dir, f"{temp_dir}-w1", f"{temp_dir}-w2"):
            shutil.rmtree(d, ignore_errors=True)


def _wait(url, proc):
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answering (401 without a token): it is up
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the Ray head did not come up") from None
            time.sleep(1)


def _nodes(url, token):
    req = urllib.request.Request(url + "/api/v0/nodes?limit=10", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return []


def _working_dir(tmp_path, *, with_repo=True):
    """A copy of the project without the bulk (.git, .venv, tests, benchmarks) for `--working-dir`."""
    wd = tmp_path / f"wd-{uuid.uuid4().hex[:8]}"
    if with_repo:
        shutil.copytree(ROOT, wd, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.db",
                                                                ".pytest_cache", "benchmarks", "tests"))
    else:
        wd.mkdir()
    return wd


def _submit(cluster, wd, *cmd, env=None):
    p = subprocess.run([RAY, "job", "submit", "--address", cluster["url"], "--working-dir", str(wd), "--", *cmd],
                       env=env or cluster["env"], capture_output=True, text=True, timeout=900)
    return p


def test_submission_without_token_is_refused(cluster):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(cluster["url"] + "/api/jobs/", timeout=10)
    assert e.value.code == 401
    p = subprocess.run([RAY, "job", "submit", "--address", cluster["url"], "--", "python", "-c", "print(1)"],
                       env=cluster["no_token_env"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "auth" in (p.stdout + p.stderr).lower()


def _wait_for_key(s3, prefix, part, proc, timeout_s=300):
    """The first key under `prefix` holding `part`, once it exists (fails when `proc` ended first)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        hits = [k for k in s3.keys("cluster", prefix) if part in k]
        if hits:
            return hits[0]
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"no key with {part!r} under {prefix} after {timeout_s}s")


def test_a_preempted_pool_checkpoints_at_once_and_the_run_goes_on_from_that_step(cluster, tmp_path):
    """Ray is told a worker node is being preempted (`ray drain-node`, reason preemption): every rank
    checkpoints at its next check, within epoch 1; then both worker nodes are killed and come back (new
    machines), and the run continues from that checkpoint's step at the same world size, said in the
    summary's restarts and on the console. Checkpoints and coordinator states on the bucket, outputs in a
    folder of the driver's own: no shared POSIX folder is needed; the Train workers on the worker nodes."""
    out, s3 = tmp_path / "driver-local", cluster["s3"]
    job = subprocess.Popen(
        [RAY, "job", "submit", "--address", cluster["url"], "--working-dir", str(_working_dir(tmp_path)), "--",
         "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.yaml", "--output-dir", str(out),
         "--set", "name=preempted", "--set", "worker_resources={trainer: 1}", "--set", "epochs=2",
         "--set", "task_args.size=20000", "--set", "preemption_check_steps=4", "--set", "audit=true",
         "--set", f"storage_path={s3.uri('cluster', 'runs')}"],
        env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300  # epoch 1 has begun: rank 0 audits its plan
        while not (out / "preempted" / "audit" / "plan001.npz").exists():
            assert job.poll() is None and time.time() < deadline, job.stdout.read()[-4000:]
            time.sleep(0.2)
        node = next(n["node_id"] for n in _nodes(cluster["url"], cluster["token"])
                    if not n["is_head_node"] and n.get("state") == "ALIVE")
        drain = subprocess.run([RAY, "drain-node", "--address", cluster["gcs"], "--node-id", node, "--reason",
                                "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim",
                                "--deadline-remaining-seconds", "600"], env=cluster["env"], capture_output=True,
                               text=True, timeout=60)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        key = _wait_for_key(s3, "runs/preempted/", "epoch_001_attempt_000_step_", job)
        step = int(key.split("_step_")[1].split("/")[0])
        for i in (1, 2):
            cluster["stop_worker"](i)
        for i in (1, 2):
            cluster["start_worker"](i)
        log, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower() and cluster["token"] not in log
    with open(out / "preempted" / "summary.json") as fh:
        s = json.load(fh)
    lines = [ln for ln in log.splitlines() if "[repb_ray]" in ln]
    assert [e["epoch"] for e in s["per_epoch"]] == [1, 2] and 0 < step < s["per_epoch"][0]["steps"], (step, lines)
    assert s["restarts"][0] == {"epoch": 1, "step": step, "world_size_before": 2, "world_size": 2}, (s["restarts"], lines)
    assert any("[repb_ray] epoch 2/2:" in ln for ln in lines), lines  # the console reaches the job's log
    nodes = {str(np.load(f)["node"]) for f in glob.glob(str(out / "preempted" / "audit" / "epoch*_rank*.npz"))}
    assert nodes and cluster["head"] not in nodes, (nodes, cluster["head"])     # Train workers on the worker nodes
    assert not (out / "ray_results").exists()                                   # nothing of the run's state here
    keys = s3.keys("cluster", "runs/preempted/")
    assert "runs/preempted/repb_run.json" in keys and "runs/preempted/_owner/g000001.json" in keys
    states = sorted({k.split("/")[3] for k in keys if k.startswith("runs/preempted/coordinator/")})
    assert states[-1] == "epoch_00002", states
    assert sorted(k.rsplit("/", 1)[1] for k in keys if f"/coordinator/{states[-1]}/" in k) == ["global.npz",
                                                                                            "shard_000.npz"]
    from mlflow.tracking import MlflowClient
    run = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db").get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED", run.info.status


class _Log:
    """A job's output read as it comes (a thread), so a test can wait for a line while the job runs."""

    def __init__(self, proc):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, part: str, timeout_s: float = 300) -> str:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            hit = next((ln for ln in list(self.lines) if part in ln), None)
            if hit is not None:
                return hit
            assert self.proc.poll() is None or self.thread.is_alive(), "\n".join(self.lines[-60:])
            time.sleep(0.2)
        raise AssertionError(f"no line with {part!r} after {timeout_s}s:\n" + "\n".join(self.lines[-60:]))


def _replay(s, audit, policy, policy_args, num_samples, seed):
    """The core policy fed every epoch's audited scores (of the ranks that finished it), re-trimmed where
    the world size changed as the coordinator does: each plan the run trained is checked against it."""
    from repb_ray.core import make_policy
    from repb_ray.core.plan import plan_digest
    rows = s["per_epoch"]
    p = make_policy(policy, num_samples=num_samples, seed=seed, world_size=rows[0]["world_size"], **policy_args)
    for i, e in enumerate(rows):
        ws = e["world_size"]
        if i and (ws != rows[i - 1]["world_size"] or len(p.plan) % ws):
            p.retrim(ws)
        plan = np.load(audit / f"plan{e['epoch']:03d}.npz")
        ranks = [np.load(audit / f"epoch{e['epoch']:03d}_rank{r}.npz") for r in range(ws)]
        ids = np.concatenate([r["ids"] for r in ranks])
        assert np.array_equal(np.sort(ids), plan["ids"]) and np.unique(ids).size == ids.size, e["epoch"]
        assert plan_digest(plan["ids"]) == e["plan_digest"] == p.plan.digest, e["epoch"]  # trained once, as decided
        p.observe(np.concatenate([r["steps"] for r in ranks]), ids, np.concatenate([r["scores"] for r in ranks]))
        p.finish_epoch(world_size=ws)


def test_elastic_workers_shrink_when_a_node_goes_and_grow_when_it_comes_back(cluster, tmp_path):
    """num_workers [1, 2], one worker per worker node: a worker node killed in epoch 2, the run goes on with
    1 worker (from epoch 2's start: its last checkpoint is epoch 1's end); once that worker has checkpointed
    epoch 2, the node is started again and Ray's next resize check (resize_check_s) grows the run back to 2
    workers (started earlier, the grown run would go back to epoch 1's checkpoint, taken with 2 workers, and
    the shrunk attempt would leave no record; epochs 3-8 on 1 worker leave the node time to come back).
    Every epoch's plan is trained exactly once by the ranks that finished it, and every decision equals the
    core policy's fed the same scores (re-trimmed where the world size changed); the summary and the console
    record both resizes."""
    out, s3 = tmp_path / "driver-local", cluster["s3"]
    job = subprocess.Popen(
        [RAY, "job", "submit", "--address", cluster["url"], "--working-dir", str(_working_dir(tmp_path)), "--",
         "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.yaml", "--output-dir", str(out),
         "--set", "name=elastic", "--set", "worker_resources={trainer: 1}", "--set", "num_workers=[1, 2]",
         "--set", "epochs=8", "--set", "task_args.size=20001", "--set", "batch_size=64", "--set", "resize_check_s=1", "--set", "audit=true",
         "--set", f"storage_path={s3.uri('cluster', 'runs')}"],
        env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = _Log(job)
    try:
        deadline = time.time() + 300  # epoch 2 has begun: rank 0 audits its plan
        while not (out / "elastic" / "audit" / "plan002.npz").exists():
            assert job.poll() is None and time.time() < deadline, "\n".join(log.lines[-60:])
            time.sleep(0.2)
        cluster["stop_worker"](1)
        shrunk = log.wait_for("on 1 worker(s) (was 2)")
        _wait_for_key(s3, "runs/elastic/", "/epoch_002/", job)  # the one worker's epoch 2, checkpointed
        cluster["start_worker"](1)
        grown = log.wait_for("on 2 worker(s) (was 1)")
        job.wait(timeout=600)
        log.thread.join(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    text = "\n".join(log.lines)
    assert job.returncode == 0, text[-4000:]
    with open(out / "elastic" / "summary.json") as fh:
        s = json.load(fh)
    sizes = [(r["world_size_before"], r["world_size"]) for r in s["restarts"]]
    assert sizes == [(2, 1), (1, 2)] and s["restarts"][0]["epoch"] == 2, (s["restarts"], shrunk, grown)
    assert all(r["step"] == 0 for r in s["restarts"]), s["restarts"]   # epoch-end checkpoints only: epochs restart
    assert [e["epoch"] for e in s["per_epoch"]] == list(range(1, 9)) and s["num_workers"] == [1, 2]
    ws = [e["world_size"] for e in s["per_epoch"]]
    assert ws[0] == 2 and ws[1] == 1 and ws[-1] == 2, ws
    _replay(s, out / "elastic" / "audit", "repb", {"rho": 0.5, "window": 1}, 20001, 0)


MY_TASK = '''
import numpy as np
import torch.nn as nn
import torch.nn.functional as F
from repb_ray import Task
from repb_ray.data import from_numpy


class SubmittedTask(Task):
    def train_dataset(self):
        x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
        return from_numpy({"x": x, "y": (x[:, 1] > 0).astype(np.int64)})

    def model(self):
        return nn.Linear(6, 2)

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
'''


def test_a_task_module_in_the_submitted_working_dir(cluster, tmp_path):
    wd = _working_dir(tmp_path, with_repo=False)
    (wd / "submitted_task.py").write_text(MY_TASK)
    (wd / "job.yaml").write_text("task: submitted_task:SubmittedTask\nepochs: 2\nbatch_size: 16\nnum_workers: 2\n"
                                 "worker_resources: {trainer: 1}\n")
    p = _submit(cluster, wd, "python", "-m", "repb_ray.cli", "train", "--config", "job.yaml", "--output-dir",
                str(cluster["shared"]), "--set", "name=submitted")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    with open(cluster["shared"] / "submitted" / "summary.json") as fh:
        s = json.load(fh)
    assert s["task"] == "submitted_task:SubmittedTask" and s["epochs"] == 2


def test_a_sweep_through_ray_job_submit(cluster, tmp_path):
    out = cluster["shared"]
    p = _submit(cluster, _working_dir(tmp_path), "python", "-m", "jobs.sweep", "--config",
                "jobs/configs/sweep_smoke.yaml", "--output-dir", str(out), "--set", "num_workers=1",
                "--set", "worker_resources={trainer: 1}", "--set", "sweep.search={policy_args.rho: {grid: [0.5]}}")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "2 trial(s) at once" in p.stdout  # two nodes hold the `trainer` resource
    with open(out / "sweep_smoke" / "sweep_summary.json") as fh:
        s = json.load(fh)
    assert [t["status"] for t in s["trials"]] == ["FINISHED"] * 2
    assert (out / "sweep_smoke" / "paper_table.md").exists() and (out / "mlflow.db").exists()


def test_a_relative_output_dir_is_refused_on_the_cluster(cluster, tmp_path):
    p = _submit(cluster, _working_dir(tmp_path), "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.yaml")
    assert p.returncode != 0
    assert "output_dir='runs' is relative, and this run is on a Ray cluster" in p.stdout + p.stderr
