"""Fault injection for the resume tests (`fail_at` in the config): at one (epoch, step, rank), once per
run (or at every attempt with `every_attempt`: a failure that repeats), raise in the worker, SIGKILL it, or
SIGKILL the coordinator's or a shard actor's process.
Runs in the Train worker that meets the point."""

from __future__ import annotations

import os
import signal

from repb_ray import _ray_compat


def maybe_fail(fail_at: dict | None, run_dir: str, epoch: int, step: int, rank: int, session) -> None:
    f = fail_at
    if not f or (f["epoch"], f.get("step", 0), f.get("rank", 0)) != (epoch, step, rank):
        return
    kind = f.get("kind", "worker")
    marker = os.path.join(run_dir, f".injected_{kind}_e{epoch}_s{step}_r{rank}")
    if os.path.exists(marker) and not f.get("every_attempt"):
        return  # injected once already: this is the resumed attempt
    os.makedirs(run_dir, exist_ok=True)
    open(marker, "w").close()
    if kind in ("coordinator", "shard"):
        targets = session._routing.targets
        handle = session.coordinator if kind == "coordinator" else targets[len(targets) // 2]
        if kind == "shard" and handle is session.coordinator:
            raise ValueError("fail_at kind=shard needs coordinator_shards > 1 (the shards live in the coordinator)")
        pid = _ray_compat.actor_pid(handle)
        os.kill(pid, signal.SIGKILL)  # the actor's process dies, as on an OOM kill (same node in the tests)
        return
    if kind == "kill":  # the process dies, as on an OOM kill or a lost node
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure at epoch {epoch}, step {step}, rank {rank} (fail_at)")


