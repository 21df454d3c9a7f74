"""Speedup from pruning: wall time of RePB vs the full-data run at the same epochs, against the
ideal 1 - pruned fraction; both through repb_ray (2 workers), run alternately.

    python benchmarks/speedup.py [--subset 20000] [--epochs 6] [--rounds 1]
    python benchmarks/speedup.py --summaries runs/fashion_mnist_repb/summary.json runs/fashion_mnist_full/summary.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "speedup.json")


def compare(repb: dict, full: dict) -> dict:
    t_r = sum(e["epoch_time_s"] for e in repb["per_epoch"])
    t_f = sum(e["epoch_time_s"] for e in full["per_epoch"])
    tr_r = sum(e["train_time_s"] for e in repb["per_epoch"])
    tr_f = sum(e["train_time_s"] for e in full["per_epoch"])
    ideal = 1 - repb["pruned_fraction"]
    # epochs 2..: both past start-up (the first run in a fresh Ray pays for it in epoch 1)
    later_r = sum(e["epoch_time_s"] for e in repb["per_epoch"][1:])
    later_f = sum(e["epoch_time_s"] for e in full["per_epoch"][1:])
    kept_later = sum(e["kept"] for e in repb["per_epoch"][1:]) / max(sum(e["kept"] for e in full["per_epoch"][1:]), 1)
    return {"repb_epoch_time_s": t_r, "full_epoch_time_s": t_f, "time_ratio": t_r / t_f,
            "repb_train_time_s": tr_r, "full_train_time_s": tr_f, "train_time_ratio": tr_r / tr_f,
            "wall_ratio": repb["wall_time_s"] / full["wall_time_s"],
            "later_epochs_ratio": later_r / later_f if later_f else float("nan"), "later_epochs_ideal": kept_later,
            "target_ratio": ideal * 1.03,
            "ideal_ratio": 1 - repb["pruned_fraction"], "pruned_fraction": repb["pruned_fraction"],
            "repb_wall_s": repb["wall_time_s"], "full_wall_s": full["wall_time_s"],
            "repb_accuracy": repb["final_test_accuracy"], "full_accuracy": full["final_test_accuracy"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--summaries", nargs=2, metavar=("REPB", "FULL"))
    args = ap.parse_args()
    load = os.getloadavg()
    if args.summaries:
        pairs = [tuple(json.load(open(p)) for p in args.summaries)]
    else:
        from repb_ray.config import Config
        from repb_ray.train.driver import run_training
        base = Config.from_yaml(os.path.join(os.path.dirname(__file__), "..", "jobs", "configs", "fashion_mnist_repb.yaml"),
                                [f"task_args.train_subset={args.subset}", f"epochs={args.epochs}",
                                 "tracking_uri=none", "output_dir=/tmp/repb_ray_bench"])
        pairs = []
        for r in range(args.rounds):
            full = run_training(base.replace(name=f"speed-full-{r}", policy="full", policy_args={}), progress=False, overwrite=True)
            repb = run_training(base.replace(name=f"speed-repb-{r}"), progress=False, overwrite=True)
            pairs.append((repb, full))
    rows = [compare(r, f) for r, f in pairs]
    for row in rows:
        print(f"RePB {row['repb_epoch_time_s']:.0f}s vs full {row['full_epoch_time_s']:.0f}s of epoch time: ratio "
              f"{row['time_ratio']:.3f} (training time only: {row['train_time_ratio']:.3f}), ideal (1 - pruned "
              f"{row['pruned_fraction']:.3f}) {row['ideal_ratio']:.3f}, target <= {row['target_ratio']:.3f}; whole "
              f"run (start-up included) {row['wall_ratio']:.3f}; epochs 2.. {row['later_epochs_ratio']:.3f} against "
              f"their kept fraction {row['later_epochs_ideal']:.3f}; "
              f"accuracy {row['repb_accuracy']:.4f} vs {row['full_accuracy']:.4f}")
    with open(OUT, "w") as fh:
        source = {"summaries": args.summaries} if args.summaries else {"loadavg_at_start": load, "loadavg_at_end": os.getloadavg()}
        json.dump({"rows": rows, **source}, fh, indent=2)


if __name__ == "__main__":
    main()
