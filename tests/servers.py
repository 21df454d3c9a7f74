"""Real servers the tests start on 127.0.0.1 (an MLflow tracking server), and the CLI as a separate
process connected to the test session's Ray."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a server started in its own session, and its children."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def mlflow_server(folder):
    """`mlflow server` on a free 127.0.0.1 port with its store in `folder`; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "server-artifacts"), "--host", "127.0.0.1",
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
        yield url, proc
    finally:
        stop(proc)


def cli_env(ray_address: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1", **extra)
    return env


def cli(argv, ray_address: str, cwd: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`python -m repb_ray.cli ARGV` in its own process, connected to the test session's Ray."""
    return subprocess.run([sys.executable, "-m", "repb_ray.cli", *argv], cwd=cwd, env=cli_env(ray_address, **env),
                          capture_output=True, text=True, timeout=timeout)


def cli_popen(argv, ray_address: str, cwd: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "repb_ray.cli", *argv], cwd=cwd, env=cli_env(ray_address, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until(proc: subprocess.Popen, needle: str, timeout: float = 600) -> list[str]:
    """Lines of `proc`'s output up to the first holding `needle` (raises if it ends or times out first)."""
    import select
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        if not select.select([proc.stdout], [], [], 1.0)[0]:
            if proc.poll() is not None:
                raise AssertionError(f"the process ended ({proc.returncode}) before {needle!r}: {''.join(lines)[-3000:]}")
            continue
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"the process ended ({proc.returncode}) before {needle!r}: {''.join(lines)[-3000:]}")
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} within {timeout}s: {''.join(lines)[-3000:]}")


class S3Server:
    """An S3 API server (moto's standalone server) on 127.0.0.1: conditional writes included."""

    def __init__(self, port: int, proc: subprocess.Popen):
        self.port, self.proc = port, proc
        self.endpoint = f"http://127.0.0.1:{port}"
        self._made: set = set()

    @property
    def env(self) -> dict:
        """What a process needs to reach it through the usual chain (any key works with moto)."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def bucket(self, name: str) -> str:
        if name not in self._made:
            import boto3
            boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
            self._made.add(name)
        return name

    def uri(self, bucket: str, prefix: str = "") -> str:
        """pyarrow's own form for an S3-compatible store: the endpoint in the query string."""
        self.bucket(bucket)
        return (f"s3://{bucket}/{prefix}".rstrip("/")
                + f"?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextlib.contextmanager
def s3_server():
    """`moto_server` on a free 127.0.0.1 port; yields an S3Server."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.25)
        else:
            raise RuntimeError("moto_server did not answer in 30 s")
        yield S3Server(port, proc)
    finally:
        stop(proc)
