"""GPU check of the plain-PyTorch path (no Ray): full data vs RePB on Fashion-MNIST, small CNN and
ResNet-18, bf16 autocast; prints images/s and the share of each step spent in repb_ray's work.

    python benchmarks/gpu_check.py [--data DIR] [--models cnn,resnet18] [--epochs 5] [--json out.json]

DIR holds the four Fashion-MNIST idx .gz files (default: `fashion-mnist/` beside this script, then
/usr/share/datasets/fashion-mnist). The whole dataset lives on the device; each epoch's plan (ids
in a seeded order and their CTR weights) is copied to the device once, so per step repb_ray's work
is two device-side gathers (weight lookup) and one device-side copy of the per-sample losses (score
hand-off): no host sync per step. The policy sees the scores once per epoch (one device-to-host
copy). The training loop runs under torch.cuda.set_sync_debug_mode("warn") and counts host syncs.

First it checks the parts of repb_ray's own loop that need no Ray, on this device: the `Evaluator`
asynchronous (its own thread and stream, test batches collated on the host and copied by it) against
synchronous while the default stream is kept busy and the live weights change under it (the metrics
must be equal), and `TrainStep` in bf16 with accumulation (two batches of b step as one of 2b). Runs on
the CPU too (slowly; `--subset 2048 --epochs 2 --models cnn --repeats 1 --device cpu` in the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray.core import make_policy  # noqa: E402  (numpy only: no Ray, no MLflow)
from repb_ray.tasks.fashion_mnist import FILES, SYSTEM_DIR, idx_paths, read_idx  # noqa: E402  (numpy)
from repb_ray.tasks.models import build_model  # noqa: E402  (torch only)


def find_data(arg: str | None) -> dict:
    """{split: (images path, labels path)} from --data, else a copy beside the script, else the system's."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion-mnist")
    for d in ([arg] if arg else [here, SYSTEM_DIR]):
        found = {split: idx_paths(d, split) for split in FILES}
        if all(found.values()):
            return found
    raise SystemExit(f"Fashion-MNIST idx files not found in {arg or here + ' or ' + SYSTEM_DIR}; pass --data DIR "
                     "holding " + ", ".join(f + "[.gz]" for split in FILES.values() for f in split))


def build(name: str) -> nn.Module:
    """The built-in task's models (repb_ray/tasks/models.py: torch only) for 1x28x28 images."""
    return build_model(name, (1, 28, 28), 10)


def run(model_name: str, variant: str, data: dict, args, device: torch.device) -> dict:
    """variant: 'plain' (a plain loop: no weights, no score hand-off), 'full' (repb_ray's step work
    with the full-data policy) or 'repb'."""
    x, y, tx, ty = data["x"], data["y"], data["tx"], data["ty"]
    n = int(y.shape[0])
    policy_name = "full" if variant == "plain" else variant
    hooks = variant != "plain"
    params = {"repb": {"rho": args.rho, "window": args.window}, "full": {}}[policy_name]
    policy = make_policy(policy_name, num_samples=n, seed=args.seed, **params)
    torch.manual_seed(args.seed)
    model = build(model_name).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total_steps = args.epochs * -(-n // args.batch_size)  # cosine over the full-data step count
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t, total_steps) / total_steps)))
    amp = dict(device_type=device.type, dtype=torch.bfloat16)
    cuda = device.type == "cuda"
    scores = torch.empty(n, dtype=torch.float32, device=device)  # score hand-off buffer, on device
    epochs, repb_ms, step_ms = [], 0.0, 0.0
    syncs = 0
    for epoch in range(1, args.epochs + 1):
        plan = policy.plan
        t_host = time.perf_counter()
        order = np.random.default_rng([args.seed, epoch]).permutation(len(plan))
        ids_d = torch.from_numpy(plan.ids[order]).to(device, non_blocking=True)
        w_plan = torch.from_numpy(plan.weights[order]).to(device, non_blocking=True)
        host_plan_s = time.perf_counter() - t_host
        steps = -(-len(plan) // args.batch_size)
        marks = []
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            for s in range(steps):
                a, b = s * args.batch_size, min((s + 1) * args.batch_size, len(plan))
                if cuda and s >= 1:  # time repb_ray's step work on the device (no host sync)
                    e = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                    e[0].record()
                bid = ids_d[a:b]
                w = w_plan[a:b] if hooks else None               # repb_ray: weight lookup
                if cuda and s >= 1:
                    e[1].record()
                xb = x.index_select(0, bid).unsqueeze(1).float().div_(255.0).sub_(0.286).div_(0.353)
                xb = xb.contiguous(memory_format=torch.channels_last)
                yb = y.index_select(0, bid)
                with torch.autocast(**amp):
                    out = model(xb)
                loss = F.cross_entropy(out.float(), yb, reduction="none")
                opt.zero_grad(set_to_none=True)
                (loss * w if hooks else loss).mean().backward()
                opt.step()
                sched.step()
                if cuda and s >= 1:
                    e[2].record()
                if hooks:
                    scores[a:b].copy_(loss.detach())              # repb_ray: score hand-off
                if cuda and s >= 1:
                    e[3].record()
                    marks.append(e)
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
        if epoch > 1:  # epoch 1 holds one-time lazy initialisation
            syncs += sum("synchroniz" in str(c.message) for c in caught)
        train_s = time.perf_counter() - t0
        if cuda:
            repb_ms += sum(e[0].elapsed_time(e[1]) + e[2].elapsed_time(e[3]) for e in marks)
            step_ms += sum(e[0].elapsed_time(e[3]) for e in marks)
        # End of epoch: one device-to-host copy of the scores, then the policy decides D_{E+1}.
        t1 = time.perf_counter()
        if hooks:
            sc = scores[: len(plan)].cpu().numpy()
            step_of = (np.arange(len(plan), dtype=np.int64) // args.batch_size)
            policy.observe(step_of, plan.ids[order], sc)
            policy.finish_epoch()
        host_s = time.perf_counter() - t1 + host_plan_s
        epochs.append({"epoch": epoch, "trained": len(plan), "train_s": train_s, "policy_s": host_s,
                       "images_per_s": len(plan) / train_s})
        print(f"  {model_name:8s} {variant:5s} epoch {epoch}: {len(plan):6d} images, {train_s:6.2f}s train, "
              f"{len(plan) / train_s:9.0f} img/s, policy {1e3 * host_s:6.1f} ms", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(**amp):
        for a in range(0, len(ty), 2000):
            xb = tx[a:a + 2000].unsqueeze(1).float().div_(255.0).sub_(0.286).div_(0.353)
            correct += int((model(xb.contiguous(memory_format=torch.channels_last)).argmax(1) == ty[a:a + 2000]).sum())
    timed = epochs[1:] if len(epochs) > 1 else epochs  # epoch 1 holds cudnn autotuning
    train_s = sum(e["train_s"] for e in timed)
    full_equiv = n * len(timed)
    return {"model": model_name, "variant": variant, "policy": policy_name, "epochs": epochs, "test_accuracy": correct / len(ty),
            "timed_epochs": len(timed), "train_s": train_s, "trained_images": sum(e["trained"] for e in timed),
            "pruned_fraction": 1 - sum(e["trained"] for e in epochs) / (n * len(epochs)),
            "images_per_s": sum(e["trained"] for e in timed) / train_s, "full_equiv_images": full_equiv,
            "policy_s_per_epoch": float(np.mean([e["policy_s"] for e in timed])),
            "repb_step_share": (repb_ms / step_ms) if step_ms else None, "host_syncs_in_loop": syncs}


def contract_checks(paths: dict, args, device: torch.device) -> dict:
    """The Evaluator (async vs sync under a busy default stream) and TrainStep (bf16, accumulation) on `device`."""
    from repb_ray.tasks.fashion_mnist import FashionMNIST  # noqa: PLC0415  (numpy + torch)
    from repb_ray.torch.collate import to_tensors  # noqa: PLC0415
    from repb_ray.torch.evaluation import Evaluator  # noqa: PLC0415
    from repb_ray.torch.scores import Scorer  # noqa: PLC0415
    from repb_ray.torch.step import TrainStep  # noqa: PLC0415
    task = FashionMNIST(data_dir=os.path.dirname(paths["test"][0]), source="memory", test_subset=args.check_test)
    tx, ty = task.arrays("test")
    cpu = torch.device("cpu")

    def batches():  # as Ray Data's collate gives them to the evaluation: on the host
        for a in range(0, len(ty), 500):
            raw = {"id": np.arange(a, min(a + 500, len(ty)), dtype=np.int64), "x": tx[a:a + 500], "y": ty[a:a + 500]}
            yield to_tensors(task.eval_preprocess(raw), cpu)

    torch.manual_seed(args.seed)
    model = build(args.check_model).to(device)
    sync = Evaluator(task, batches, device, mode="sync")
    sync.start(1, model)
    want = sync.result()[1]
    ev = Evaluator(task, batches, device, mode="async", model=model)
    ev.start(1, model)
    ev.release()
    busy = torch.randn(2048, 2048, device=device)
    with torch.no_grad():
        for _ in range(args.check_busy):  # the training thread: the default stream kept busy, the weights changing
            busy = torch.tanh(busy @ busy)
            for p in model.parameters():
                p.add_(1e-3)
    got = ev.result()[1]
    ev.close()
    equal = got == want
    print(f"evaluator: async {got} vs sync {want}: {'equal' if equal else 'DIFFERENT'}", flush=True)

    grads = []
    x, y = task.arrays("test")
    for split in (False, True):
        torch.manual_seed(args.seed)
        m = build("mlp").to(device)  # no BatchNorm: its batch statistics would differ between 2 x 32 and 64
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        step = TrainStep(task, "fashion_mnist", m, opt, Scorer("loss"), precision="bf16", device_type=device.type)
        whole = {"id": np.arange(64, dtype=np.int64), "x": x[:64], "y": y[:64], "weight": np.linspace(0.5, 2, 64, dtype=np.float32)}
        parts = [{k: v[a:a + 32] for k, v in whole.items()} for a in (0, 32)] if split else [whole]
        for part in parts:
            step.batch(to_tensors(task.eval_preprocess(part), device), group_size=64)
        grads.append(torch.cat([p.grad.flatten().float() for p in m.parameters()]))
    rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
    print(f"train step, bf16: 2 accumulated batches of 32 vs one of 64: relative gradient difference {rel:.2e}", flush=True)
    return {"evaluator_equal": bool(equal), "evaluator_metrics": got, "accumulation_rel_diff": rel}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of plain, full, RePB")
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--subset", type=int, default=None, help="first N training images (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--check-model", default="resnet18", help="the model of the Evaluator and TrainStep checks")
    ap.add_argument("--check-test", type=int, default=None, help="test images of the Evaluator check (default: all)")
    ap.add_argument("--check-busy", type=int, default=200, help="matmuls on the default stream during the async evaluation")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        raise SystemExit(f"--epochs must be >= 2 (epoch 1 is warm-up and pruning starts at epoch 2), got {args.epochs}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # cudnn.benchmark stays off: RePB's last batch changes size every epoch and would be re-tuned
    # each time, a cost the full run does not pay.
    paths = find_data(args.data)
    x, y = (read_idx(p) for p in paths["train"])
    tx, ty = (read_idx(p) for p in paths["test"])
    if args.subset:
        x, y = x[: args.subset], y[: args.subset]
    data = {k: torch.from_numpy(np.array(v)).to(device) for k, v in
            {"x": x, "y": y.astype(np.int64), "tx": tx, "ty": ty.astype(np.int64)}.items()}
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "batch_size": args.batch_size, "epochs": args.epochs,
            "rho": args.rho, "window": args.window, "num_samples": int(len(y)), "bf16_autocast": True}
    print(f"device {info['device']}, torch {info['torch']}, {len(y)} training images, batch {args.batch_size}, "
          f"{args.epochs} epochs (epoch 1 not timed)", flush=True)
    checks = contract_checks(paths, args, device)
    results = []
    for m in args.models.split(","):
        runs = {"plain": [], "full": [], "repb": []}
        for _ in range(args.repeats):  # interleaved, so drift in clocks hits every variant alike
            for v in runs:
                runs[v].append(run(m, v, data, args, device))
        results += [r for v in runs.values() for r in v]
        best = {v: min(rs, key=lambda r: r["train_s"]) for v, rs in runs.items()}
        plain, full, repb = best["plain"], best["full"], best["repb"]
        ratio = repb["train_s"] / full["train_s"]
        ideal = repb["trained_images"] / full["trained_images"]
        print(f"{m} (fastest of {args.repeats}): plain {plain['images_per_s']:.0f} img/s, full {full['images_per_s']:.0f} "
              f"img/s (x{full['train_s'] / plain['train_s']:.3f} of plain), RePB {repb['images_per_s']:.0f} img/s; "
              f"time RePB/full {ratio:.3f} (trained-image ratio {ideal:.3f}, x{ratio / ideal:.3f}); "
              f"repb_ray step work {100 * (repb['repb_step_share'] or 0):.2f}% of step device time; "
              f"policy {1e3 * repb['policy_s_per_epoch']:.1f} ms/epoch; host syncs in loop after epoch 1: "
              f"{sum(r['host_syncs_in_loop'] for rs in runs.values() for r in rs)}; test acc plain "
              f"{plain['test_accuracy']:.4f}, full {full['test_accuracy']:.4f}, RePB {repb['test_accuracy']:.4f} "
              f"(pruned {repb['pruned_fraction']:.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "checks": checks, "results": results}, f, indent=1)
    if not checks["evaluator_equal"] or checks["accumulation_rel_diff"] > 0.02:
        raise SystemExit("a check failed: see the lines above")


if __name__ == "__main__":
    main()
