"""Framework overhead: the `full` policy through repb_ray (1 Ray Train worker, Ray Data serving,
coordinator actor) vs a plain PyTorch loop, same model, data, batch size and one torch thread.

    python benchmarks/framework_overhead.py [--subset 10000] [--epochs 3] [--rounds 2]

Runs alternate (plain, ray, plain, ray, ...) so that machine load hits both alike. Reported: the
ratio of the mean training time per epoch (epochs 2.., epoch 1 holds start-up; evaluation excluded
on both sides) and of the whole run (Ray start-up, evaluation and checkpoints included).
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from accuracy import run as plain_run
from repb_ray.config import Config
from repb_ray.data import load_dataset

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "framework_overhead.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import ray
    from repb_ray.train.driver import ensure_ray, run_training
    cfg = Config(name="overhead", dataset="fashion_mnist", train_subset=args.subset, epochs=args.epochs, policy="full",
                 model="cnn", batch_size=128, num_workers=1, cpus_per_worker=1, torch_threads=1, tracking_uri="none",
                 output_dir="/tmp/repb_ray_bench")
    setting = {"dataset": "fashion_mnist", "train_subset": args.subset, "epochs": args.epochs, "batch_size": 128,
               "lr": cfg.lr, "model": "cnn", "torch_threads": 1}
    train, test = load_dataset("fashion_mnist")
    train = train.subset(args.subset)
    data = (train, test, torch.from_numpy(train.features(train.x)))
    ensure_ray(cfg)
    rows = []
    for r in range(args.rounds):
        t = time.perf_counter()
        p = plain_run("full", {}, 0, data, setting)
        rows.append({"round": r, "kind": "plain", "wall_s": time.perf_counter() - t, "epoch_s": p["train_time_per_epoch"]})
        t = time.perf_counter()
        s = run_training(cfg.replace(name=f"overhead-{r}"), progress=False)
        rows.append({"round": r, "kind": "repb_ray", "wall_s": time.perf_counter() - t,
                     "epoch_s": [e["train_time_s"] for e in s["per_epoch"]]})
        print(f"round {r}: plain {rows[-2]['wall_s']:.1f}s, repb_ray {rows[-1]['wall_s']:.1f}s", flush=True)
    def mean(kind, key):
        vals = [np.mean(x["epoch_s"][1:]) if key == "epoch" else x["wall_s"] for x in rows if x["kind"] == kind]
        return float(np.mean(vals))
    res = {"subset": args.subset, "epochs": args.epochs, "rounds": rows, "loadavg_at_end": os.getloadavg(),
           "epoch_ratio": mean("repb_ray", "epoch") / mean("plain", "epoch"),
           "wall_ratio": mean("repb_ray", "wall") / mean("plain", "wall")}
    print(f"epoch time (epochs 2..{args.epochs}): repb_ray {mean('repb_ray', 'epoch'):.2f}s vs plain "
          f"{mean('plain', 'epoch'):.2f}s -> ratio {res['epoch_ratio']:.2f}")
    print(f"whole run: repb_ray {mean('repb_ray', 'wall'):.1f}s vs plain {mean('plain', 'wall'):.1f}s -> ratio {res['wall_ratio']:.2f}")
    with open(OUT, "w") as fh:
        json.dump(res, fh, indent=2)
    ray.shutdown()


if __name__ == "__main__":
    main()
