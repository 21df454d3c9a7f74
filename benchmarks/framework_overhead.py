"""Framework overhead: the `full` policy through repb_ray (1 Ray Train worker, Ray Data reading the
Parquet shards, coordinator actor) vs a plain PyTorch loop, same task, model, data and batch size.

    python benchmarks/framework_overhead.py [--subset 10000] [--epochs 4] [--rounds 2] [--threads 1]

The plain loop is what a PyTorch user writes for Fashion-MNIST: the images normalised once into a
float tensor, a shuffling DataLoader, the task's model and loss, SGD. Runs alternate (plain, repb_ray
with eval_mode sync, with eval_mode async, plain, ...) so that machine load hits all alike; Ray is
started once beforehand. Reported per mode: the ratio of the mean training time per epoch (epochs 2..,
epoch 1 holds start-up; with sync evaluation it is outside the epoch on both sides, with async it runs
in a thread during the next epoch), of the whole run (start-up, evaluation and checkpoints included),
where each step's milliseconds went (waiting for data, the step, observing, the rest), and the epoch
boundary stall (the last step of an epoch to the first of the next).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray.config import Config  # noqa: E402
from repb_ray.tasks.loader import TaskRef  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "framework_overhead.json")


def plain_loop(task, subset: int, epochs: int, batch_size: int, lr: float, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    x, y = task.arrays("train")
    x = torch.from_numpy(np.ascontiguousarray(task.features(x[:subset])))
    y = torch.from_numpy(y[:subset].astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    torch.manual_seed(seed)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    tx, ty = task.arrays("test")
    tx, ty = torch.from_numpy(np.ascontiguousarray(task.features(tx))), torch.from_numpy(ty.astype(np.int64))
    times, accs = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            accs.append(float(sum((model(tx[a:a + 1000]).argmax(1) == ty[a:a + 1000]).sum()
                                  for a in range(0, len(ty), 1000)) / len(ty)))
    return {"train_time_s": times, "wall_s": time.perf_counter() - t_start, "accuracy": accs[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (the worker holds 1 CPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shuffle-rows", type=int, default=Config.shuffle_rows,
                    help="repb_ray's local shuffle buffer (0: block order and in-block shuffle only)")
    ap.add_argument("--eval-modes", default="sync,async",
                    help="repb_ray runs per round, one per evaluation mode (sync: evaluation outside the epoch's "
                         "training time, as on the plain side; async: evaluated while the next epoch trains)")
    ap.add_argument("--json", default=OUT)
    args = ap.parse_args()
    import ray

    from repb_ray.train.driver import run_training
    from repb_ray.train.ray_env import ensure_ray
    modes = args.eval_modes.split(",")
    out = tempfile.mkdtemp(prefix="repb_overhead_")
    cfg = Config(task="fashion_mnist", task_args={"train_subset": args.subset}, epochs=args.epochs, policy="full",
                 batch_size=args.batch_size, num_workers=1, cpus_per_worker=1, torch_threads=args.threads,
                 tracking_uri="none", output_dir=out, shuffle_rows=args.shuffle_rows)
    task = TaskRef(cfg.task, cfg.task_args).load()
    task.train_dataset()  # prepares the Parquet shards once, outside the timing
    ensure_ray(cfg)
    load = os.getloadavg()
    rows = []
    for r in range(args.rounds):
        p = plain_loop(task, args.subset, args.epochs, args.batch_size, cfg.lr, cfg.seed, args.threads)
        rows.append({"round": r, "kind": "plain", **p})
        print(f"round {r}: plain {p['wall_s']:.1f}s (epochs {np.round(p['train_time_s'], 2).tolist()})", flush=True)
        for mode in modes:
            t = time.perf_counter()
            s = run_training(cfg.replace(name=f"overhead-{r}-{mode}", eval_mode=mode), progress=False)
            row = {"round": r, "kind": mode, "wall_s": time.perf_counter() - t, "accuracy": s["final_test_accuracy"],
                   **{k: [e[k] for e in s["per_epoch"]] for k in ("train_time_s", "data_wait_s", "compute_s",
                                                                  "observe_s")},
                   "boundary": [{k[9:]: round(v, 3) for k, v in e.items() if k.startswith("boundary_")}
                                for e in s["per_epoch"][1:]]}
            rows.append(row)
            print(f"round {r}: repb_ray eval {mode} {row['wall_s']:.1f}s (epochs "
                  f"{np.round(row['train_time_s'], 2).tolist()}, waiting for data "
                  f"{np.round(row['data_wait_s'], 2).tolist()}); boundaries {row['boundary']}", flush=True)

    def mean(kind, key):
        vals = [np.mean(x[key][1:]) if key != "wall_s" else x["wall_s"] for x in rows if x["kind"] == kind]
        return float(np.mean(vals))
    steps = math.ceil(args.subset / args.batch_size)
    plain_epoch = mean("plain", "train_time_s")
    res = {"subset": args.subset, "shuffle_rows": args.shuffle_rows, "epochs": args.epochs, "threads": args.threads,
           "batch_size": args.batch_size, "rounds": rows, "loadavg_at_start": load, "modes": {}}
    print(f"plain loop: {plain_epoch:.2f}s per epoch (epochs 2..{args.epochs}), {1000 * plain_epoch / steps:.2f} ms "
          f"per step, whole run {mean('plain', 'wall_s'):.1f}s")
    for mode in modes:
        ms = {k: 1000 * mean(mode, k) / steps for k in ("train_time_s", "data_wait_s", "compute_s", "observe_s")}
        ms["other"] = ms["train_time_s"] - ms["data_wait_s"] - ms["compute_s"] - ms["observe_s"]
        stalls = [b["stall_s"] for x in rows if x["kind"] == mode for b in x["boundary"]]
        m = res["modes"][mode] = {
            "epoch_ratio": mean(mode, "train_time_s") / plain_epoch, "wall_ratio": mean(mode, "wall_s") / mean("plain", "wall_s"),
            "per_step_ms": ms, "boundary_stall_s": {"mean": float(np.mean(stalls)), "max": float(np.max(stalls))}}
        print(f"eval {mode}: per epoch {mean(mode, 'train_time_s'):.2f}s -> ratio {m['epoch_ratio']:.3f}; whole run "
              f"{mean(mode, 'wall_s'):.1f}s -> ratio {m['wall_ratio']:.2f}; per step {ms['train_time_s']:.2f} ms = "
              f"data {ms['data_wait_s']:.2f} + step {ms['compute_s']:.2f} + observe {ms['observe_s']:.2f} + other "
              f"{ms['other']:.2f}; boundary stall mean {np.mean(stalls):.2f}s, max {np.max(stalls):.2f}s")
    res["loadavg_at_end"] = os.getloadavg()
    print(f"load average {load[0]:.2f} at start, {res['loadavg_at_end'][0]:.2f} at end")
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
