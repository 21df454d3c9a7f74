"""The built-in loop's training step (repb_ray.torch.step.TrainStep: CTR-weighted loss, scores, backward,
update) with and without bf16 autocast, torch.compile and channels-last, on the same model and batches,
side by side in one run; with --scores, fp32 eager with each score instead (loss, grad_norm,
last_layer_grad_norm). Plain PyTorch, no Ray; CPU or GPU.

    python benchmarks/step_time.py [--model cnn|resnet18] [--batch 128] [--steps 30] [--device cpu|cuda] [--scores]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray.tasks.fashion_mnist import FashionMNIST  # noqa: E402
from repb_ray.torch.scores import Scorer  # noqa: E402
from repb_ray.torch.step import TrainStep  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "step_time.json")
SCORES_OUT = os.path.join(os.path.dirname(OUT), "score_cost.json")
VARIANTS = [("fp32", False, False), ("bf16", False, False), ("fp32", True, False), ("bf16", True, False),
            ("bf16", True, True)]


def measure(model_name: str, batch: int, steps: int, device: str, precision: str, compiled: bool,
            channels_last: bool, threads: int, score: str = "loss") -> dict:
    torch.manual_seed(0)
    task = FashionMNIST(model=model_name)
    model = task.model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = TrainStep(task, "fashion_mnist", run, opt, Scorer(score, model), precision=precision,
                     channels_last=channels_last, device_type=torch.device(device).type)
    gen = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(batch, 1, 28, 28, generator=gen).to(device),
                "y": torch.randint(0, 10, (batch,), generator=gen).to(device),
                "id": torch.arange(batch), "weight": torch.ones(batch, device=device)} for _ in range(4)]
    t_first = time.perf_counter()
    for b in batches[:2]:  # warm-up (compilation happens here)
        step.batch(b)
        step.step()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    warm = time.perf_counter() - t_first
    t = time.perf_counter()
    for i in range(steps):
        loss, scores = step.batch(batches[i % len(batches)])
        step.step()
    sync()
    ms = 1000 * (time.perf_counter() - t) / steps
    return {"score": score, "precision": precision, "compile": compiled, "channels_last": channels_last, "ms_per_step": ms,
            "warmup_s": warm, "final_loss": float(loss), "threads": threads}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["cnn", "resnet18", "mlp"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None)
    ap.add_argument("--scores", action="store_true", help="fp32 eager with each score, side by side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = []
    if args.scores:
        for score in ("loss", "grad_norm", "last_layer_grad_norm"):
            r = measure(args.model, args.batch, args.steps, args.device, "fp32", False, False, args.threads, score)
            rows.append(r)
            print(f"{args.model} batch {args.batch} on {args.device}: score {score}: {r['ms_per_step']:.2f} ms/step "
                  f"({r['ms_per_step'] / rows[0]['ms_per_step']:.3f}x the loss score)", flush=True)
        res = {"model": args.model, "batch": args.batch, "device": args.device, "torch": torch.__version__,
               "threads": args.threads, "loadavg_at_start": load, "rows": rows}
        with open(args.json or SCORES_OUT, "w") as fh:
            json.dump(res, fh, indent=2)
        return
    for precision, compiled, channels_last in VARIANTS:
        try:
            r = measure(args.model, args.batch, args.steps, args.device, precision, compiled, channels_last,
                        args.threads)
        except Exception as exc:  # torch.compile needs a working compiler toolchain
            r = {"precision": precision, "compile": compiled, "channels_last": channels_last,
                 "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        rows.append(r)
        base = rows[0].get("ms_per_step")
        text = (f"{r['ms_per_step']:.2f} ms/step ({base / r['ms_per_step']:.2f}x fp32 eager), warm-up {r['warmup_s']:.1f}s"
                if "ms_per_step" in r else r["error"])
        print(f"{args.model} batch {args.batch} on {args.device}: {precision}{' +compile' if compiled else ''}"
              f"{' +channels_last' if channels_last else ''}: {text}", flush=True)
    res = {"model": args.model, "batch": args.batch, "device": args.device, "torch": torch.__version__,
           "loadavg_at_start": load, "rows": rows}
    with open(args.json or OUT, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
