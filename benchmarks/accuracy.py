"""Accuracy vs pruned fraction on Fashion-MNIST (small CNN): full, RePB at several rho, InfoBatch and
Random* at the pruned fraction RePB reached, and the Table 10 ablations; 3 seeds each.

    python benchmarks/accuracy.py --piece full        # one piece per command, each well under an hour
    python benchmarks/accuracy.py --piece repb
    python benchmarks/accuracy.py --piece matched     # InfoBatch and Random*, needs the repb piece
    python benchmarks/accuracy.py --piece ablations
    python benchmarks/accuracy.py --merge             # table + plot from the pieces

Runs use the plain-PyTorch harness of repb_ray (core policy + repb_ray.torch, the same train step as
the Ray workers) in one process with one torch thread, so the comparison is of the methods, not of
Ray start-up. Pieces write benchmarks/results/accuracy/<piece>.json.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from repb_ray.core import make_policy
from repb_ray.data import load_dataset
from repb_ray.models import build_model
from repb_ray.torch import IndexedDataset, PlanCosineLR, PlanSampler
from repb_ray.torch.step import evaluate, train_step

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "accuracy")
SETTING = {"dataset": "fashion_mnist", "train_subset": 12000, "epochs": 6, "batch_size": 128, "lr": 0.05,
           "model": "cnn", "torch_threads": 1}
REPB_RHOS = (0.3, 0.5, 0.7)
MATCH_RHO = 0.5
SEEDS = (0, 1, 2)


def run(policy: str, params: dict, seed: int, data, setting: dict = SETTING) -> dict:
    train, test, x = data
    s = setting
    torch.set_num_threads(s["torch_threads"])
    pol = make_policy(policy, num_samples=len(train), seed=seed, **params)
    sampler = PlanSampler(pol.plan, seed=seed)
    loader = DataLoader(IndexedDataset(TensorDataset(x, torch.from_numpy(train.y))), batch_size=s["batch_size"],
                        sampler=sampler)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(s["model"], train.x.shape[1:], train.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = PlanCosineLR(opt, s["lr"], s["epochs"])
    t0, accs, epoch_times = time.perf_counter(), [], []
    for epoch in range(1, s["epochs"] + 1):
        te = time.perf_counter()
        sampler.set_plan(pol.plan)
        sched.start_epoch(epoch, len(loader))
        for step, (ids, (xb, yb)) in enumerate(loader):
            ids = ids.numpy()
            _, scores = train_step(model, opt, xb, yb, torch.from_numpy(pol.plan.weights_for(ids)))
            sched.step()
            pol.observe(np.full(len(ids), step, np.int64), ids, scores)
        pol.finish_epoch()
        epoch_times.append(time.perf_counter() - te)
        accs.append(evaluate(model, test, batch_size=1000, device="cpu")["test_accuracy"])
    sizes = pol.sizes[: s["epochs"]]
    return {"policy": policy, "params": params, "seed": seed, "final_accuracy": accs[-1], "accuracy_per_epoch": accs, "train_time_per_epoch": epoch_times,
            "pruned_fraction": 1 - sum(sizes) / (s["epochs"] * len(train)), "wall_time_s": time.perf_counter() - t0}


def _label(policy, params):
    if policy == "repb":
        extra = [k for k in ("resample", "lwp", "ctr") if params.get(k) is False]
        return f"repb rho={params['rho']}" + (f" no-{'/no-'.join(extra)}" if extra else "")
    if policy in ("infobatch", "random"):
        return f"{policy} r={params['prune_ratio']:.3f}"
    return policy


def piece_configs(piece: str) -> list:
    if piece == "full":
        return [("full", {})]
    if piece == "repb":
        return [("repb", {"rho": r, "window": 1}) for r in REPB_RHOS]
    if piece == "ablations":
        return [("repb", {"rho": MATCH_RHO, "window": 1, k: False}) for k in ("resample", "lwp", "ctr")]
    if piece == "matched":
        with open(os.path.join(HERE, "repb.json")) as fh:
            runs = [r for r in json.load(fh)["runs"] if r["params"]["rho"] == MATCH_RHO]
        target = float(np.mean([r["pruned_fraction"] for r in runs]))
        # InfoBatch prunes only below-mean samples, only in epochs 2..floor(delta*T): scale r up to match
        T, delta = SETTING["epochs"], 0.875
        pruning_epochs = max(1, int(np.floor(delta * T)) - 1)
        r_ib = min(0.95, target * T / (0.6 * pruning_epochs))
        return [("random", {"prune_ratio": round(target, 4)}),
                ("infobatch", {"prune_ratio": round(r_ib, 4), "num_epochs": T, "delta": delta})]
    raise SystemExit(f"unknown piece {piece!r}; choose full, repb, matched, ablations")


def merge() -> None:
    rows = []
    for piece in ("full", "repb", "matched", "ablations"):
        path = os.path.join(HERE, f"{piece}.json")
        if not os.path.exists(path):
            print(f"(piece {piece} not run yet)")
            continue
        runs = json.load(open(path))["runs"]
        groups = {}
        for r in runs:
            groups.setdefault(_label(r["policy"], r["params"]), []).append(r)
        for label, rs in groups.items():
            acc = np.array([r["final_accuracy"] for r in rs]) * 100
            pf = np.array([r["pruned_fraction"] for r in rs]) * 100
            rows.append({"method": label, "seeds": len(rs), "accuracy_mean": acc.mean(), "accuracy_std": acc.std(ddof=1) if len(rs) > 1 else 0.0,
                         "pruned_mean": pf.mean(), "pruned_std": pf.std(ddof=1) if len(rs) > 1 else 0.0,
                         "wall_time_s_mean": float(np.mean([r["wall_time_s"] for r in rs]))})
    lines = ["| method | seeds | test accuracy % (mean ± sd) | pruned % (mean ± sd) | wall s/run |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
                     f"{r['pruned_mean']:.1f} ± {r['pruned_std']:.1f} | {r['wall_time_s_mean']:.0f} |")
    table = "\n".join(lines)
    print(table)
    out = os.path.dirname(HERE)
    with open(os.path.join(out, "accuracy.json"), "w") as fh:
        json.dump({"setting": SETTING, "rows": rows}, fh, indent=2)
    with open(os.path.join(out, "accuracy.md"), "w") as fh:
        fh.write(table + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        ax.errorbar(r["pruned_mean"], r["accuracy_mean"], xerr=r["pruned_std"], yerr=r["accuracy_std"], fmt="o", capsize=3)
        ax.annotate(r["method"], (r["pruned_mean"], r["accuracy_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="pruned % of sample-steps", ylabel="final test accuracy %",
           title=f"Fashion-MNIST {SETTING['train_subset']} samples, {SETTING['epochs']} epochs, {len(SEEDS)} seeds")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=100)
    print(f"wrote {out}/accuracy.json, accuracy.md, accuracy.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--piece", choices=["full", "repb", "matched", "ablations"])
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = ap.parse_args()
    if args.merge:
        return merge()
    if not args.piece:
        ap.error("give --piece or --merge")
    train, test = load_dataset(SETTING["dataset"])
    train = train.subset(SETTING["train_subset"])
    data = (train, test, torch.from_numpy(train.features(train.x)))
    runs = []
    for policy, params in piece_configs(args.piece):
        for seed in args.seeds:
            r = run(policy, params, seed, data)
            runs.append(r)
            print(f"{_label(policy, params):<28} seed {seed}: accuracy {r['final_accuracy']:.4f} "
                  f"pruned {r['pruned_fraction']:.3f} {r['wall_time_s']:.0f}s", flush=True)
    os.makedirs(HERE, exist_ok=True)
    with open(os.path.join(HERE, f"{args.piece}.json"), "w") as fh:
        json.dump({"setting": SETTING, "loadavg_at_end": os.getloadavg(), "runs": runs}, fh, indent=2)


if __name__ == "__main__":
    main()
