"""The built-in small CNN in the default layout vs channels-last (as it is built now): a training step
(forward, per-sample loss, backward, SGD with momentum) and an evaluation pass, alternated round by
round, side by side in one run; random Fashion-MNIST-shaped images, no Ray.

    python benchmarks/channels_last.py [--threads 1] [--steps 60] [--rounds 3] [--json out.json]

The default-layout side is the same modules converted back to the default layout and called without the
model's own conversion of its input, i.e. the model as it was built before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from repb_ray.tasks.models import SmallCNN  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "channels_last.json")


def build(layout: str):
    torch.manual_seed(0)
    m = SmallCNN()
    if layout == "default":
        m = m.to(memory_format=torch.contiguous_format)
        return m, lambda x: m.head(m.features(x))
    return m, m


def train_ms(layout: str, x, y, batch: int) -> float:
    model, forward = build(layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t = time.perf_counter()
    for a in range(0, x.shape[0], batch):
        loss = F.cross_entropy(forward(x[a:a + batch]), y[a:a + batch], reduction="none").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - t) / (x.shape[0] // batch)


def eval_s(layout: str, x, batch: int = 256) -> float:
    model, forward = build(layout)
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        for a in range(0, x.shape[0], batch):
            forward(x[a:a + batch]).argmax(1)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    ap.add_argument("--batch-sizes", default="64,128")
    ap.add_argument("--eval-images", type=int, default=5000, help="images per evaluation pass (batches of 256)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    load = os.getloadavg()
    rows = []
    for r in range(args.rounds):
        for layout in ("default", "channels_last"):
            row = {"round": r, "layout": layout}
            for b in sizes:
                x = torch.randn(b * args.steps, 1, 28, 28, generator=g)
                y = torch.randint(0, 10, (b * args.steps,), generator=g)
                row[f"train_ms_batch{b}"] = train_ms(layout, x, y, b)
            row["eval_s"] = eval_s(layout, torch.randn(args.eval_images, 1, 28, 28, generator=g))
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    keys = [k for k in rows[0] if k not in ("round", "layout")]
    means = {lay: {k: float(np.mean([x[k] for x in rows if x["layout"] == lay])) for k in keys}
             for lay in ("default", "channels_last")}
    speedup = {k: means["default"][k] / means["channels_last"][k] for k in keys}
    for k in keys:
        print(f"{k}: default {means['default'][k]:.3f}, channels-last {means['channels_last'][k]:.3f} -> "
              f"{speedup[k]:.2f}x")
    end = os.getloadavg()
    print(f"load average {load[0]:.2f} at start, {end[0]:.2f} at end; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    with open(args.json, "w") as fh:
        json.dump({"threads": args.threads, "steps": args.steps, "eval_images": args.eval_images, "rounds": rows,
                   "mean": means, "speedup": speedup, "loadavg_at_start": load, "loadavg_at_end": end,
                   "torch": torch.__version__}, fh, indent=2)


if __name__ == "__main__":
    main()
