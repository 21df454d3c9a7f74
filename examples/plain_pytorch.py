"""RePB in a plain PyTorch loop (no Ray), driven by a Task: the built-in Fashion-MNIST task's model,
per-sample loss, preprocess and metrics, exactly the code the Ray workers run.

    python examples/plain_pytorch.py --epochs 3 [--task synthetic] [--policy repb --rho 0.5 --window 1] [--subset 10000]

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
from repb_ray.tasks.loader import TaskRef
from repb_ray.torch import IndexedDataset, PlanSampler, Scorer, build_optimizer, gather_observations
from repb_ray.torch.step import evaluate, train_step


def as_batch(task, ids, x, y, epoch, weights=None):
    """A numpy batch through the task's preprocess, as the Ray pipeline would hand it over."""
    raw = {"id": ids.numpy(), "x": x.numpy(), "y": y.numpy(), "epoch": np.full(len(ids), epoch, np.int64)}
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in task.preprocess(raw).items()}
    if weights is not None:
        batch["weight"] = torch.from_numpy(weights)
    return batch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fashion_mnist", choices=["fashion_mnist", "synthetic"])
    ap.add_argument("--policy", default="repb", choices=["repb", "infobatch", "random", "full", "egreedy", "ucb", "orderdp"])
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--subset", type=int, default=None, help="use the first N training samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    task = TaskRef(args.task).load()
    x, y = task.arrays("train")
    x, y = x[: args.subset], y[: args.subset]
    tx, ty = task.arrays("test")
    data = IndexedDataset(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    params = {"repb": {"rho": args.rho, "window": args.window},
              "infobatch": {"prune_ratio": args.rho, "num_epochs": args.epochs},
              "full": {}}.get(args.policy, {"prune_ratio": args.rho})
    policy = make_policy(args.policy, num_samples=len(y), seed=args.seed, world_size=world, **params)
    sampler = PlanSampler(policy.plan, rank=rank, world_size=world, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = task.model()
    opt = build_optimizer("sgd", model.parameters(), lr=args.lr, momentum=0.9)
    scorer = Scorer("loss", model)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_plan(policy.plan)
        steps, ids, scores = [], [], []
        for step, (batch_ids, (xb, yb)) in enumerate(loader):
            w = policy.plan.weights_for(batch_ids.numpy())
            _, s = train_step(task, args.task, model, opt, as_batch(task, batch_ids, xb, yb, epoch, w), scorer,
                              first=epoch == 1 and step == 0)
            steps.append(np.full(len(batch_ids), step, np.int64))
            ids.append(batch_ids.numpy())
            scores.append(s.numpy())
        policy.observe(*gather_observations(np.concatenate(steps), np.concatenate(ids), np.concatenate(scores)))
        kept = len(policy.plan)
        policy.finish_epoch(world_size=world)
        test = (as_batch(task, torch.arange(a, min(a + 1000, len(ty))), torch.from_numpy(tx[a:a + 1000]),
                         torch.from_numpy(ty[a:a + 1000]), 0) for a in range(rank * 1000, len(ty), 1000 * world))
        metrics = evaluate(task, model, test, "cpu")
        if rank == 0:
            print(f"epoch {epoch}: trained {kept}/{len(y)} samples, test accuracy {metrics['accuracy']:.4f}, "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    if rank == 0:
        print(f"pruned fraction over {args.epochs} epochs: {1 - sum(policy.plan_sizes[:-1]) / (args.epochs * len(y)):.3f}")


if __name__ == "__main__":
    main()
