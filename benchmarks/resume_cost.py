"""What a checkpoint within an epoch costs at scale: the coordinator's state of N sample ids saved halfway
through an epoch (the per-sample state plus the observations of the epoch's first half) and restored as a
resumed run restores it. No id sets: the ranks' position is a count. Prints seconds and bytes per id.

    python benchmarks/resume_cost.py [--sizes 10M,100M] [--json out.json]

One shard in this process (the coordinator's own, coordinator_shards = 1), RePB after one epoch (the plan
of epoch 2 is what a resumed run trains), written with the same functions the coordinator uses."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray import storage  # noqa: E402
from repb_ray.core import make_policy  # noqa: E402


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def measure(n: int, folder: str) -> dict:
    p = make_policy("repb", num_samples=n, seed=0, rho=0.5, window=4)
    rng = np.random.default_rng(0)
    batch = 1 << 16
    for phase in ("epoch 1", "half of epoch 2"):
        ids = p.plan.ids
        upto = ids.size if phase == "epoch 1" else ids.size // 2
        for step, a in enumerate(range(0, upto, batch)):
            chunk = ids[a:min(a + batch, upto)]
            p.observe(step, chunk, rng.random(chunk.size, dtype=np.float32))
        if phase == "epoch 1":
            p.finish_epoch()
    shard = p.shards[0]
    path = os.path.join(folder, "shard_000.npz")
    t = time.perf_counter()
    storage.save_npz(path, shard.state_arrays(), {"lo": shard.lo, "hi": shard.hi, **shard.state_scalars()})
    save_s = time.perf_counter() - t
    size = os.path.getsize(path)
    t = time.perf_counter()
    arrays, meta = storage.load_npz(path)
    fresh = type(shard)(shard.lo, shard.hi, shard.spec)
    fresh.load_arrays({**arrays, **{k: v for k, v in meta.items() if k not in ("lo", "hi")}}, shard.epoch)
    load_s = time.perf_counter() - t
    assert fresh.buf.size == shard.buf.size and np.array_equal(fresh.counts, shard.counts)
    return {"num_samples": n, "plan": int(p.plan_sizes[-1]), "observed": int(shard.buf.size), "save_s": save_s,
            "restore_s": load_s, "file_bytes": size, "bytes_per_id": size / n,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10M,100M")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for n in (_size(s) for s in args.sizes.split(",")):
        folder = tempfile.mkdtemp(prefix="repb-resume-")
        try:
            r = measure(n, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(r)
        print(f"{n:>12,d} ids: plan {r['plan']:,d}, {r['observed']:,d} observed; state {r['file_bytes'] / 2**20:,.0f} MiB "
              f"({r['bytes_per_id']:.1f} B/id), saved in {r['save_s']:.2f}s, restored in {r['restore_s']:.2f}s "
              f"(peak RSS {r['peak_rss_gib']:.1f} GiB)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_avg": os.getloadavg(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
