"""RePB in a standard PyTorch Lightning script: a small image classifier on Fashion-MNIST (the system
copy; generated images with --synthetic). The lines marked `# repb_ray` are all that changes from the
plain Lightning script.

    python examples/lightning_callback.py [--epochs 3] [--subset 10000] [--devices 1] [--synthetic]
"""

import argparse

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from repb_ray.lightning import PruningCallback  # repb_ray
from repb_ray.torch import end_process_group


class Classifier(pl.LightningModule):
    def __init__(self, pruning: PruningCallback, lr: float = 0.05):
        super().__init__()
        self.pruning, self.lr = pruning, lr  # repb_ray (the callback, to weight the loss)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                       torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(512, 10))

    def training_step(self, batch, batch_idx):
        ids, (x, y) = batch  # repb_ray (was: x, y = batch)
        per_sample = F.cross_entropy(self.net(x), y, reduction="none")  # repb_ray (was: the mean)
        return self.pruning.loss(per_sample, ids)  # repb_ray (CTR-weighted; records the scores)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(args):
    if args.synthetic:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, size=args.subset)
        x = (rng.normal(0, 1, size=(args.subset, 1, 28, 28)) + y[:, None, None, None] * 0.1).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    from repb_ray.tasks.fashion_mnist import FashionMNIST
    task = FashionMNIST()
    x, y = task.arrays("train")
    return torch.from_numpy(task.features(x[: args.subset])), torch.from_numpy(y[: args.subset])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args(argv)
    x, y = data(args)
    train_set = TensorDataset(x, y)
    pruning = PruningCallback("repb", {"rho": 0.5}, num_samples=len(train_set), epochs=args.epochs)  # repb_ray
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[pruning], use_distributed_sampler=False)  # repb_ray (the two last arguments)
    trainer.fit(Classifier(pruning), pruning.dataloader(train_set, batch_size=64))  # repb_ray (was: a DataLoader)
    if trainer.is_global_zero:
        for e in pruning.epochs_log:
            print(f"epoch {e['epoch']}: trained {e['kept']}/{len(train_set)} samples ({e['pruned_fraction']:.1%} pruned)")
    end_process_group()  # with devices > 1: Lightning leaves its gloo group alive, which can abort the exit


if __name__ == "__main__":
    main()
