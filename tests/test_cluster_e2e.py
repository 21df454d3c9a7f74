"""End to end: a real local Ray head with token auth, the smoke job through `ray job submit`."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with RAY_AUTH_MODE=token; yields (dashboard URL, env with token)."""
    tmp = tmp_path_factory.mktemp("head")
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(32))
    os.chmod(token_file, 0o600)
    home = tmp / "home"  # an empty HOME: no ~/.ray/auth_token to fall back on
    home.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base_env.update(HOME=str(home), PYTHONPATH=ROOT,  # `python` in the job is this interpreter
                    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env = dict(base_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    port, dash = _free_port(), _free_port()
    temp_dir = f"/tmp/rh{os.getpid()}"
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", "--include-dashboard=true",
         # every port explicit: another Ray on this machine (a user's, a test session's) holds the defaults
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}", f"--object-manager-port={_free_port()}",
         f"--node-manager-port={_free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (401 without a token): it is up
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the Ray head did not come up")
                time.sleep(1)
        yield url, env, base_env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submission_without_token_is_refused(head):
    url, _, no_token_env = head
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/api/jobs/", timeout=10)
    assert e.value.code == 401
    p = subprocess.run([RAY, "job", "submit", "--address", url, "--", "python", "-c", "print(1)"],
                       env=no_token_env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "auth" in (p.stdout + p.stderr).lower()


def test_smoke_job_through_ray_job_submit(head, tmp_path):
    url, env, _ = head
    out = tmp_path / "out"
    for _ in range(30):  # the head's job agent starts a little after the dashboard
        p = subprocess.run(
            [RAY, "job", "submit", "--address", url, "--working-dir", ROOT, "--",
             "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.yaml", "--output-dir", str(out),
             "--set", "tracking_uri=none", "--set", "name=submitted"],
            env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in p.stderr:
            break
        time.sleep(2)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "succeeded" in (p.stdout + p.stderr).lower()
    token = open(env["RAY_AUTH_TOKEN_PATH"]).read().strip()
    assert token not in p.stdout + p.stderr
    with open(out / "submitted" / "summary.json") as fh:
        s = json.load(fh)
    assert s["epochs"] == 2 and s["num_workers"] == 2 and len(s["per_epoch"]) == 2
    assert s["per_epoch"][0]["kept"] == 256 and s["per_epoch"][1]["kept"] < 256
