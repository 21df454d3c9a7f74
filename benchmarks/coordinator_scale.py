"""Coordinator at scale: real actors on this machine, N sample ids with K shards, scores sent as Ray
Train workers send them; prints the end-of-epoch latency, bytes per sample and checkpoint time.

    python benchmarks/coordinator_scale.py [--sizes 10M,100M] [--shards 1,4,8] [--ranks 4] [--json out.json]

Each of `--ranks` feeder actors plays a worker: it takes its share of the epoch's plan from the
published PlanIndex (as a Ray Data read would), shuffles it, and sends (step, ids, scores) in batches
of `--batch` through the workers' own sender (one chunk per shard every `observe_every` steps).
End-of-epoch latency: from the moment every observation has been processed by its shard until
wait_plan returns the next plan (the ranks' `finish` calls, the K-shard decision, the publication).
Epochs 1 and 2 are timed; epoch 3 runs with tracemalloc in the shard processes for the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import ray

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray.data.plan_index import plan_for, read_epoch  # noqa: E402
from repb_ray.train import coordinator  # noqa: E402
from repb_ray.train.messages import EpochDone  # noqa: E402
from repb_ray.train.sender import ObservationSender  # noqa: E402


def _trace(on: bool):
    """Run in an actor's process (through Ray's __ray_call__): start tracing its allocations, or stop
    and return the peak traced bytes."""
    def fn(self):
        import tracemalloc
        if on:
            tracemalloc.start()
            tracemalloc.reset_peak()
            return 0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return int(peak)
    return fn


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "B": 10**9}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMB" else s) * mult)


def _bad_scores(ids, scores, epoch):
    return RuntimeError(f"non-finite scores in epoch {epoch}")


@ray.remote(num_cpus=0)
class Feeder:
    """One rank: its share of the plan, shuffled, sent in batches through the workers' sender."""

    def __init__(self, rank: int, ranks: int, batch: int, every: int, seed: int):
        self.rank, self.ranks, self.batch, self.every, self.seed = rank, ranks, batch, every, seed

    def feed(self, front, routing, epoch: int) -> list:
        index = plan_for(front, read_epoch(front))
        mine = range(self.rank, len(index.refs), self.ranks)
        chunks = ray.get([index.refs[j] for j in mine])
        ids = np.concatenate([c.lo + np.flatnonzero(c.mask()) for c in chunks] or [np.zeros(0, np.int64)])
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        ids = ids[rng.permutation(ids.shape[0])].astype(np.int64)
        scores = rng.exponential(1.0, ids.shape[0]).astype(np.float32)
        sender = ObservationSender(routing, epoch, self.rank, self.every, _bad_scores)
        for step, a in enumerate(range(0, ids.shape[0], self.batch)):
            sender.add(step, ids[a:a + self.batch], scores[a:a + self.batch])
        sender.flush()
        ray.get(sender.refs)
        return list(sender.seq)


def run_one(n: int, k: int, args) -> dict:
    where = tempfile.mkdtemp(prefix="repb_scale_ckpt_", dir=args.tmp)
    front = coordinator.create("repb", n, args.seed, args.ranks, {"rho": args.rho, "window": args.window},
                               shards=k, chunk=args.chunk, state_root=where)
    t = time.perf_counter()
    ray.get(front.reset.remote(None, args.ranks))
    build_s = time.perf_counter() - t
    routing = ray.get(front.routing.remote())
    targets = list(routing.targets)
    holders = list(ray.get(front.shard_handles.remote())) or [front]  # the processes holding the state
    feeders = [Feeder.remote(r, args.ranks, args.batch, args.every, args.seed) for r in range(args.ranks)]
    row = {"num_samples": n, "shards": k, "ranks": args.ranks, "batch": args.batch, "build_s": build_s,
           "epochs": []}
    for epoch in (1, 2, 3):
        traced = epoch == 3
        if traced:
            ray.get([h.__ray_call__.remote(_trace(True)) for h in holders])
        t0 = time.perf_counter()
        seqs = ray.get([f.feed.remote(front, routing, epoch) for f in feeders])
        t1 = time.perf_counter()
        ray.get([tg.finish.remote(EpochDone(routing.generation, epoch, r, j, seq[j]))
                 for r, seq in enumerate(seqs) for j, tg in enumerate(targets)])
        summary = ray.get(front.wait_plan.remote(routing.generation, epoch + 1, 3600.0))
        t2 = time.perf_counter()
        e = {"epoch": epoch, "trained": int(sum(summary.plan_sizes[epoch - 1:epoch])), "feed_s": t1 - t0,
             "end_of_epoch_s": t2 - t1, "next_kept": summary.kept, "timing": summary.timing}
        if traced:
            peaks = ray.get([h.__ray_call__.remote(_trace(False)) for h in holders])
            e["peak_traced_bytes"] = peaks
        mem = ray.get(front.memory.remote())
        e["resident_bytes"] = int(sum(m["state"] + m["buffer"] for m in mem))
        e["resident_bytes_per_shard_max"] = int(max(m["state"] + m["buffer"] for m in mem))
        row["epochs"].append(e)
        print(f"  N={n:>11,} K={k}: epoch {epoch} fed {e['trained']:,} scores in {e['feed_s']:.1f}s, end of epoch "
              f"{e['end_of_epoch_s']:.3f}s (decide {summary.timing['decide_s']:.2f}s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in summary.timing["steps"].items())
              + f"; publish {summary.timing['publish_s']:.2f}s), next plan {e['next_kept']:,}, resident "
              f"{e['resident_bytes'] / n:.2f} B/sample" + (f", peak {max(peaks) / (n / k):.2f} B/sample of a shard "
                                                            "above its resident state" if traced else ""), flush=True)
        if epoch == 2:
            t = time.perf_counter()
            ray.get(front.save.remote("epoch_00002"))
            row["checkpoint_s"] = time.perf_counter() - t
            row["checkpoint_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(where) for f in fs)
    index = plan_for(front, read_epoch(front))
    chunks = ray.get(list(index.refs))
    row["published_plan_bytes"] = int(sum(c.bits.nbytes + c.weights.nbytes for c in chunks))
    timed = [e["end_of_epoch_s"] for e in row["epochs"][:2]]
    row["end_of_epoch_s"] = max(timed)
    row["resident_bytes_per_sample"] = row["epochs"][1]["resident_bytes"] / n
    shard_n = -(-n // k)
    row["peak_bytes_per_sample"] = (row["epochs"][2]["resident_bytes_per_shard_max"]
                                    + max(row["epochs"][2]["peak_traced_bytes"])) / shard_n
    for f in feeders:
        ray.kill(f)
    ray.kill(front)
    shutil.rmtree(where)
    print(f"N={n:,} K={k}: end of epoch {row['end_of_epoch_s']:.3f}s (max of epochs 1-2), resident "
          f"{row['resident_bytes_per_sample']:.2f} B/sample, peak {row['peak_bytes_per_sample']:.2f} B/sample "
          f"(largest shard), checkpoint {row['checkpoint_s']:.2f}s for {row['checkpoint_bytes'] / n:.2f} B/sample, "
          f"published plan {row['published_plan_bytes'] / n:.2f} B/sample", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10M,100M")
    ap.add_argument("--shards", default="1,4,8")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024, help="per-rank batch size")
    ap.add_argument("--every", type=int, default=32, help="observe_every: steps per chunk")
    ap.add_argument("--chunk", type=int, default=None, help="ids per published PlanChunk (default: the coordinator's)")
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--tmp", default=None, help="where checkpoints are written (default: the system temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    shard_counts = [int(k) for k in args.shards.split(",")]
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=True,
             runtime_env={"py_modules": [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "repb_ray")]})
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average before "
          f"{load[0]:.2f}; RePB rho={args.rho} W={args.window}, {args.ranks} ranks x batch {args.batch}", flush=True)
    rows = [run_one(n, k, args) for n in sizes for k in shard_counts]
    ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "load_before": load}, "args": vars(args), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
