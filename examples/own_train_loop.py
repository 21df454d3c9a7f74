"""RePB in a hand-written Ray Train loop: no Task, no CLI; your dataset, model and loss.

    python examples/own_train_loop.py [--epochs 3] [--workers 2] [--out /tmp/own_loop]

The driver wraps the Ray dataset (an int64 `id` column) with `Pruning`; the loop gets each batch's
CTR weights as the `weight` column (applied with `weighted_loss`) and reports the per-sample losses
with `session.observe`. With
the same model, data and optimizer it reaches the same plans as `repb-ray train` (tested).
"""

import argparse
import json
import os

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn as nn
import torch.nn.functional as F
from ray.train.torch import TorchTrainer

from repb_ray.data import from_numpy
from repb_ray.torch import weighted_loss
from repb_ray.train import Pruning, PruningSession


def make_data(n: int = 256, dim: int = 16, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng([seed, 7])  # the same clusters as the built-in synthetic task
    centres = rng.normal(0, 2.0, size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, size=n + max(n // 4, 16)).astype(np.int64)
    x = (centres[y] + rng.normal(0, 2.5, size=(y.size, dim)).astype(np.float32)).astype(np.float32)
    return x[:n], y[:n]


def train_loop(config: dict) -> list:
    session = PruningSession(config["pruning"])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    model = ray.train.torch.prepare_model(model) if session.world_size > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    session.start(None)                                 # or the location saved in your checkpoint
    shard = ray.train.get_dataset_shard("train")
    digests = []
    for epoch in session.epochs(config["epochs"]):
        steps = session.steps_per_epoch(config["batch_size"])
        for i, batch in enumerate(session.batches(shard, config["batch_size"])):
            progress = (epoch - 1 + i / steps) / config["epochs"]   # cosine over the real (pruned) steps
            for g in opt.param_groups:
                g["lr"] = config["lr"] * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))
            per_sample = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
            loss = weighted_loss(per_sample, batch["weight"])   # CTR-weighted (1/|B|) sum w_i l_i
            opt.zero_grad()
            loss.backward()
            opt.step()
            session.observe(batch["id"], per_sample)
        digests.append(session.summary.digest)
        ray.train.report({"epoch": epoch, "kept": session.summary.kept})
    return digests


def run(epochs: int = 3, workers: int = 2, batch_size: int = 16, lr: float = 0.05, out: str = "/tmp/own_loop") -> list:
    x, y = make_data()
    ds = from_numpy({"x": x, "y": y}, block_rows=64)
    pruning = Pruning("repb", {"rho": 0.5, "window": 1}, num_samples=len(y), num_workers=workers,
                      storage_path=os.path.abspath(out), name="own-loop")
    try:
        result = TorchTrainer(
            train_loop, train_loop_config={"pruning": pruning.handle, "epochs": epochs, "batch_size": batch_size,
                                           "lr": lr},
            datasets={"train": pruning.dataset(ds)}, dataset_config=pruning.data_config(),
            scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="own-loop", storage_path=os.path.abspath(out)),
        ).fit()
    finally:
        pruning.shutdown()
    return result.return_value


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/own_loop")
    a = ap.parse_args()
    ray.init(num_cpus=max(4, a.workers + 2), include_dashboard=False)
    print(json.dumps({"plan_digests": run(a.epochs, a.workers, out=a.out)}, indent=1))
