"""Ingest: a Parquet dataset of PNG images served through the pruning filter at several pruned
fractions; prints the time per epoch against the unpruned epoch and the driver's peak RSS.

    python benchmarks/ingest.py [--rows 100000,1280000] [--pruned 0,0.3,0.6] [--dir /tmp/repb_ingest]
                                [--no-reservation] [--json PATH]

The dataset: Fashion-MNIST's 60k training images PNG-encoded once and repeated to `rows` rows, written
with repb_ray's `prepare` helper (files of 2048 rows, dense int64 ids). Each epoch's plan comes from a
coordinator (the `random` policy at the pruned fraction, `full` at 0), and the epoch is read as a
training run reads it: `read_parquet` prunes at the read (ids first), then the task's preprocess
(PNG decode of the kept rows only), consumed in batches of 1024 by the driver standing in for a
worker. Each row count is read in its own process (the dataset written beforehand by this one), so its
peak RSS is the epochs' own. Each epoch also reports how many of Ray's CPUs were busy on average
(sampled from ray.available_resources() between batches) and the Parquet read cost per row measured
alone; `--no-reservation` turns off Ray Data's per-operator resource reservation for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
OUT = os.path.join(HERE, "results", "ingest.json")


def make_dataset(directory: str, rows: int) -> None:
    from PIL import Image

    from repb_ray.data.prepare import MANIFEST, write_shards
    from repb_ray.tasks.fashion_mnist import FashionMNIST
    if os.path.exists(os.path.join(directory, MANIFEST)):
        return
    x, y = FashionMNIST(source="memory").arrays("train")
    pngs = []
    for img in x[:, 0]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pngs = np.array(pngs, dtype=object)
    step = 2048

    def batches():
        for a in range(0, rows, step):
            idx = np.arange(a, min(a + step, rows)) % len(pngs)
            yield {"png": pngs[idx], "label": y[idx].astype(np.int64)}
    t = time.perf_counter()
    write_shards(batches(), directory, rows_per_file=step, source=f"fashion_mnist png x{rows}")
    print(f"  wrote {rows:,} PNG rows to {directory} in {time.perf_counter() - t:.1f}s", flush=True)


def parquet_read_cost(directory: str, files: int = 20) -> dict:
    """Microseconds of CPU per row to read the id column, and a whole file, of warm Parquet files."""
    import pyarrow.parquet as pq
    paths = sorted(p for p in os.listdir(directory) if p.endswith(".parquet"))[:files]
    paths = [os.path.join(directory, p) for p in paths]
    pq.ParquetFile(paths[0]).read(columns=["id"]).column("id").to_numpy()  # pyarrow's one-time set-up
    out = {}
    for name, cols in (("id_column_us_per_row", ["id"]), ("whole_file_us_per_row", None)):
        rows, t = 0, time.process_time()
        for _ in range(3):
            for p in paths:
                rows += pq.ParquetFile(p).read(columns=cols, use_threads=False).num_rows
        out[name] = 1e6 * (time.process_time() - t) / rows
    return out


def child(rows: int, directory: str, pruned: list[float], seed: int, num_cpus: int, reservation: bool) -> dict:
    import ray

    from repb_ray.data import read_parquet
    from repb_ray.data.pipeline import pruned_dataset
    from repb_ray.tasks.loader import TaskRef
    from repb_ray.train import coordinator
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR",
             runtime_env={"working_dir": os.path.join(ROOT, "examples", "tasks"),
                          "py_modules": [os.path.join(ROOT, "repb_ray")]})
    ray.data.DataContext.get_current().enable_progress_bars = False
    task_ref = TaskRef("parquet_images:ParquetImages", {"path": directory})
    sys.path.insert(0, os.path.join(ROOT, "examples", "tasks"))
    out = {"rows": rows, "epochs": [], "op_resource_reservation": reservation, **parquet_read_cost(directory)}
    # warm-up (untimed): 1% of the rows, so worker start-up and imports are not charged to the first
    # level; the unpruned level is timed first and last, and the ratios use the mean of the two
    for i, p in enumerate([0.99] + pruned + [0.0]):
        policy, params = ("full", {}) if p == 0 else ("random", {"prune_ratio": p})
        front = coordinator.create(policy, rows, seed, 1, params)
        summary = ray.get(front.reset.remote(None, 1))
        ds = pruned_dataset(read_parquet(directory), front, task_ref)
        ds.context.op_resource_reservation_enabled = reservation
        t = time.perf_counter()
        seen, busy = 0, []
        for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
            seen += len(batch["id"])
            assert batch["x"].dtype == np.float32
            if len(busy) * 4 <= seen // 1024:  # every 4th batch: a GCS call each
                busy.append(num_cpus - ray.available_resources().get("CPU", 0.0))
        dt = time.perf_counter() - t
        if seen != summary.kept:
            raise RuntimeError(f"served {seen} rows for a plan of {summary.kept}")
        ray.kill(front)
        if i == 0:
            continue
        out["epochs"].append({"pruned": p, "kept": seen, "epoch_s": dt, "rows_per_s": seen / dt,
                              "mean_cpus_busy": float(np.mean(busy))})
        print(f"  {rows:>9,} rows, {100 * p:4.0f}% pruned: {seen:>9,} rows served and decoded in {dt:6.1f}s "
              f"({seen / dt:8.0f} rows/s, {np.mean(busy):.2f} of {num_cpus} CPUs busy)", flush=True)
    ray.shutdown()
    out["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["driver_rss_before_ray_mb"] = rss_start / 1024
    return out


TARGETS = {0.0: 1.1, 0.3: 0.74, 0.6: 0.43}  # epoch time vs the unpruned epoch, per pruned fraction


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,1280000")
    ap.add_argument("--pruned", default="0,0.3,0.6")
    ap.add_argument("--dir", default="/tmp/repb_ingest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=OUT)
    ap.add_argument("--no-reservation", action="store_true",
                    help="turn off Ray Data's per-operator resource reservation (op_resource_reservation_enabled)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    pruned = [float(p) for p in args.pruned.split(",")]
    if pruned[0] != 0:
        raise SystemExit(f"--pruned must start with 0 (the unpruned reference epoch), got {args.pruned}")
    if args.child is not None:
        res = child(args.child, os.path.join(args.dir, str(args.child)), pruned, args.seed, args.num_cpus,
                    not args.no_reservation)
        print("RESULT " + json.dumps(res), flush=True)
        return
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start", flush=True)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        make_dataset(os.path.join(args.dir, str(rows)), rows)  # here, so the child's RSS is the epochs' alone
        proc = subprocess.run([sys.executable, __file__, "--child", str(rows), "--pruned", args.pruned, "--dir",
                               args.dir, "--seed", str(args.seed), "--num-cpus", str(args.num_cpus)]
                              + (["--no-reservation"] if args.no_reservation else []),
                              stdout=subprocess.PIPE, text=True, check=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
            else:
                print(line, flush=True)
    for r in results:
        base = float(np.mean([e["epoch_s"] for e in r["epochs"] if e["pruned"] == 0]))
        last = r["epochs"].pop()  # the second unpruned epoch: part of the reference only
        r["epochs"][0]["epoch_s_second_run"] = last["epoch_s"]
        r["unpruned_epoch_s"] = base
        for e in r["epochs"]:
            e["time_ratio"] = e["epoch_s"] / base
            e["target"] = TARGETS.get(e["pruned"], (1 - e["pruned"]) * 1.06)
        print(f"{r['rows']:>9,} rows: epoch time vs unpruned " + ", ".join(
            f"{100 * e['pruned']:.0f}% pruned {e['time_ratio']:.3f} (target <= {e['target']:.3f})" for e in r["epochs"])
              + f"; driver peak RSS {r['driver_peak_rss_mb']:.0f} MB; Parquet read alone "
              f"{r['id_column_us_per_row']:.2f} us/row (ids), {r['whole_file_us_per_row']:.2f} us/row (whole file)",
              flush=True)
    with open(args.json, "w") as fh:
        json.dump({"cpus": os.cpu_count(), "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
                   "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
