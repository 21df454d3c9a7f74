"""How much a plain PyTorch loop slows when the machine's other CPU is busy: the same plain loop as the
framework-overhead benchmark, alone and beside one process normalising image batches (the kind of work
Ray Data's read tasks do), alternated, side by side in one run. No Ray.

    python benchmarks/contention.py [--subset 20000] [--epochs 2] [--rounds 2] [--json out.json]

On a machine with 2 CPUs this separates the cost of sharing the CPUs from repb_ray's own per-step work:
the framework-overhead benchmark's repb_ray side always has Ray Data, the controller and the coordinator
on the other CPU, its plain side nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from framework_overhead import plain_loop  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "contention.json")


def busy(stop) -> None:
    """Normalise random uint8 image batches into float32 until told to stop (one CPU's worth of work)."""
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2048, 1, 28, 28), dtype=np.uint8)
    while not stop.is_set():
        ((raw.astype(np.float32) / 255.0 - 0.2860) / 0.3530).sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", default=OUT)
    args = ap.parse_args()
    from repb_ray.config import Config
    from repb_ray.tasks.loader import TaskRef
    task = TaskRef("fashion_mnist", {"train_subset": args.subset}).load()
    load = os.getloadavg()
    rows = []
    for r in range(args.rounds):
        for kind in ("alone", "beside a busy CPU"):
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            worker = ctx.Process(target=busy, args=(stop,), daemon=True) if kind != "alone" else None
            if worker is not None:
                worker.start()
                time.sleep(1.0)
            try:
                p = plain_loop(task, args.subset, args.epochs, args.batch_size, Config.lr, 0, 1)
            finally:
                if worker is not None:
                    stop.set()
                    worker.join()
            steps = -(-args.subset // args.batch_size)
            ms = 1000 * float(np.mean(p["train_time_s"])) / steps
            rows.append({"round": r, "kind": kind, "train_time_s": p["train_time_s"], "ms_per_step": ms})
            print(f"round {r}: plain loop {kind}: {ms:.2f} ms per step", flush=True)
    alone = np.mean([x["ms_per_step"] for x in rows if x["kind"] == "alone"])
    shared = np.mean([x["ms_per_step"] for x in rows if x["kind"] != "alone"])
    print(f"plain loop beside a busy CPU / alone: {shared:.2f} / {alone:.2f} ms per step = {shared / alone:.3f}x; "
          f"load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"cpus": os.cpu_count(), "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
                   "rows": rows, "ratio": shared / alone}, fh, indent=1)


if __name__ == "__main__":
    main()
