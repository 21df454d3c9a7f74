"""RePB in a plain PyTorch loop (no Ray): the small CNN on Fashion-MNIST, a few epochs.

    python examples/plain_pytorch.py --epochs 3 [--policy repb --rho 0.5 --window 1] [--subset 10000]

Under torchrun, the policy is replicated on every rank: each rank gathers all ranks' observations
and reaches the same plan, since plans are a pure function of (seed, scores).
"""

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from repb_ray.core import make_policy
from repb_ray.data import load_dataset
from repb_ray.models import build_model
from repb_ray.torch import IndexedDataset, PlanSampler, gather_observations
from repb_ray.torch.step import evaluate, train_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "synthetic"])
    ap.add_argument("--policy", default="repb", choices=["repb", "infobatch", "random", "full"])
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--subset", type=int, default=None, help="use the first N training samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    train, test = load_dataset(args.dataset)
    train = train.subset(args.subset)
    data = IndexedDataset(TensorDataset(torch.from_numpy(train.features(train.x)), torch.from_numpy(train.y)))
    params = {"repb": {"rho": args.rho, "window": args.window},
              "infobatch": {"prune_ratio": args.rho, "num_epochs": args.epochs},
              "random": {"prune_ratio": args.rho}, "full": {}}[args.policy]
    policy = make_policy(args.policy, num_samples=len(train), seed=args.seed, world_size=world, **params)
    sampler = PlanSampler(policy.plan, rank=rank, world_size=world, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = build_model("auto", train.x.shape[1:], train.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_plan(policy.plan)
        steps, ids, scores = [], [], []
        for step, (batch_ids, (x, y)) in enumerate(loader):
            w = torch.from_numpy(policy.plan.weights_for(batch_ids.numpy()))
            _, s = train_step(model, opt, x, y, w)
            steps.append(np.full(len(batch_ids), step, np.int64))
            ids.append(batch_ids.numpy())
            scores.append(s)
        policy.observe(*gather_observations(np.concatenate(steps), np.concatenate(ids), np.concatenate(scores)))
        kept = len(policy.plan)
        policy.finish_epoch(world_size=world)
        acc = evaluate(model, test, batch_size=1000, device="cpu", rank=rank, world_size=world)["test_accuracy"]
        if rank == 0:
            print(f"epoch {epoch}: trained {kept}/{len(train)} samples, test accuracy {acc:.4f}, "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    if rank == 0:
        print(f"pruned fraction over {args.epochs} epochs: {1 - sum(policy.sizes[:-1]) / (args.epochs * len(train)):.3f}")


if __name__ == "__main__":
    main()
