"""Pruning-logic overhead per epoch: repb_ray's core policies vs an InfoBatch-style reference.

    python benchmarks/core_overhead.py [--sizes 1000000 10000000] [--repeats 3] [--out benchmarks/results/core_overhead.json]

One epoch = observing every sample of the plan in batches of 128 (shuffled ids, one call per batch)
plus the end-of-epoch decision. Times are medians over --repeats epochs, measured side by side in
one process; the ratio column is ours / reference (InfoBatch-style, benchmarks/infobatch_reference.py).
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from infobatch_reference import InfoBatchReference
from repb_ray.core import make_policy

BATCH = 128


def _epoch_inputs(ids, rng):
    ids = rng.permutation(ids)
    scores = rng.random(ids.size, dtype=np.float32)
    steps = (np.arange(ids.size) // BATCH).astype(np.int64)
    return [(steps[s:s + BATCH], ids[s:s + BATCH], scores[s:s + BATCH]) for s in range(0, ids.size, BATCH)]


def time_policy(name, n, repeats, **params):
    p = make_policy(name, num_samples=n, seed=0, **params)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(repeats + 1):  # the first epoch warms up allocations
        chunks = _epoch_inputs(p.plan.ids, rng)
        t = time.perf_counter()
        for c in chunks:
            p.observe(*c)
        p.finish_epoch()
        times.append(time.perf_counter() - t)
    state = p.state_dict()
    nbytes = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))
    return float(np.median(times[1:])), nbytes / n


def time_reference(n, repeats):
    ref = InfoBatchReference(n, 0.5)
    rng = np.random.default_rng(1)
    order = np.arange(n)
    times = []
    for _ in range(repeats + 1):
        chunks = _epoch_inputs(np.asarray(order, dtype=np.int64), rng)
        t = time.perf_counter()
        for _, ids, scores in chunks:
            ref.set_scores(ids, scores)
        order = ref.prune()
        times.append(time.perf_counter() - t)
    nbytes = ref.scores.nbytes + ref.weights.nbytes + len(order) * 8  # scores, weights, index list (as int64)
    return float(np.median(times[1:])), nbytes / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "core_overhead.json"))
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        ref_t, ref_b = time_reference(n, args.repeats)
        rows.append({"n": n, "policy": "infobatch-reference", "seconds": ref_t, "bytes_per_sample": ref_b, "ratio": 1.0})
        for name, params in (("repb", {"rho": 0.5, "window": 1}), ("infobatch", {"prune_ratio": 0.5, "num_epochs": 100}),
                             ("random", {"prune_ratio": 0.5})):
            t, b = time_policy(name, n, args.repeats, **params)
            rows.append({"n": n, "policy": name, "seconds": t, "bytes_per_sample": b, "ratio": t / ref_t})
            print(f"n={n:>10,} {name:<20} {t:8.4f} s/epoch  {b:6.1f} B/sample  ratio {t / ref_t:5.2f}", flush=True)
        print(f"n={n:>10,} {'infobatch-reference':<20} {ref_t:8.4f} s/epoch  {ref_b:6.1f} B/sample  ratio  1.00", flush=True)
    load = os.getloadavg()
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": load},
           "batch": BATCH, "repeats": args.repeats, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"\n{'n':>11} {'policy':<20} {'s/epoch':>8} {'B/sample':>9} {'ours/ref':>8}")
    for r in rows:
        print(f"{r['n']:>11,} {r['policy']:<20} {r['seconds']:8.4f} {r['bytes_per_sample']:9.1f} {r['ratio']:8.2f}")
    print(f"load average (1, 5, 15 min) at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
