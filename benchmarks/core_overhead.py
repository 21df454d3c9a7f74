"""Pruning-logic overhead per epoch: repb_ray's core policies vs an InfoBatch-style reference, side by side.

    python benchmarks/core_overhead.py [--sizes 1000000 10000000] [--repeats 5] [--out benchmarks/results/core_overhead.json]

One epoch = observing every sample of the plan in batches of 128 (shuffled ids, one call per batch
with one step number) plus the end-of-epoch decision. Ours and the reference alternate epoch by
epoch in one process, so the machine's speed changes hit both alike; the table reports medians and
the speedup (reference / ours). Memory: resident bytes per sample between epochs (per-sample state
and the observation buffer) and the peak during finish_epoch (tracemalloc, in an untimed epoch).
"""

import argparse
import json
import os
import platform
import time
import tracemalloc

import numpy as np
from infobatch_reference import InfoBatchReference

from repb_ray.core import make_policy

BATCH = 128
POLICIES = (("repb", {"rho": 0.5, "window": 1}), ("infobatch", {"prune_ratio": 0.5, "num_epochs": 100}),
            ("random", {"prune_ratio": 0.5}))


def _batches(ids, rng):
    ids = rng.permutation(ids)
    scores = rng.random(ids.size, dtype=np.float32)
    return [(s // BATCH, ids[s:s + BATCH], scores[s:s + BATCH]) for s in range(0, ids.size, BATCH)]


class Ours:
    def __init__(self, name, n, **params):
        self.p = make_policy(name, num_samples=n, seed=0, **params)
        self.rng = np.random.default_rng(1)

    def inputs(self):
        return _batches(self.p.plan.ids, self.rng)

    def epoch(self, batches):
        observe = self.p.observe
        for step, ids, scores in batches:
            observe(step, ids, scores)
        self.p.finish_epoch()


class Reference:
    def __init__(self, n):
        self.ref = InfoBatchReference(n, 0.5)
        self.order = np.arange(n, dtype=np.int64)
        self.rng = np.random.default_rng(1)

    def inputs(self):
        return _batches(np.asarray(self.order, np.int64), self.rng)

    def epoch(self, batches):
        for _, ids, scores in batches:
            self.ref.set_scores(ids, scores)
        self.order = self.ref.prune()


def _timed(runner):
    batches = runner.inputs()
    t = time.perf_counter()
    runner.epoch(batches)
    return time.perf_counter() - t


def _memory(runner, n):
    """(resident, peak during finish_epoch) bytes per sample, from an untimed epoch."""
    p = runner.p
    batches = runner.inputs()
    for step, ids, scores in batches:
        p.observe(step, ids, scores)
    del batches
    p._plan = None  # the plain API's materialised EpochPlan is not policy state
    tracemalloc.start()
    p.finish_epoch()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    p._plan = None
    resident = sum(sum(s.nbytes().values()) for s in p.shards)
    return resident / n, (resident + peak) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "core_overhead.json"))
    args = ap.parse_args()
    rows = []
    load_start = os.getloadavg()
    for n in args.sizes:
        ref = Reference(n)
        ours = {name: Ours(name, n, **params) for name, params in POLICIES}
        runners = [("infobatch-reference", ref)] + list(ours.items())
        for _, r in runners:  # warm-up epoch (allocations, first plans)
            _timed(r)
        times = {name: [] for name, _ in runners}
        for _ in range(args.repeats):
            for name, r in runners:
                times[name].append(_timed(r))
        ref_t = float(np.median(times["infobatch-reference"]))
        for name, _ in runners:
            t = float(np.median(times[name]))
            row = {"n": n, "policy": name, "seconds": t, "speedup_vs_reference": ref_t / t}
            if name in ours:
                row["resident_bytes_per_sample"], row["peak_bytes_per_sample"] = _memory(ours[name], n)
            rows.append(row)
            print(f"n={n:>11,} {name:<20} {t:8.4f} s/epoch  x{ref_t / t:5.1f} vs reference"
                  + (f"  {row['resident_bytes_per_sample']:5.1f} B/sample resident, {row['peak_bytes_per_sample']:5.1f} peak"
                     if name in ours else ""), flush=True)
    load = os.getloadavg()
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": load_start,
                       "loadavg_at_end": load}, "batch": BATCH, "repeats": args.repeats, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"load average (1, 5, 15 min): start {load_start[0]:.2f}, end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
