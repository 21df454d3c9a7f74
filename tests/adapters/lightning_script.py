"""A small image classifier trained with Lightning and repb_ray.lightning.PruningCallback (run by the adapter
tests: in-process, as 2 processes under torchrun, and as 2 Ray Train workers through Ray's Lightning
integration)."""

import json
import math
import os
import sys

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from repb_ray.lightning import PruningCallback


def images(n: int, seed: int = 0):
    """8x8 one-channel images of 4 classes (a bright quadrant each), with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = rng.normal(0, 0.6, size=(n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.5
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class Classifier(pl.LightningModule):
    def __init__(self, pruning: PruningCallback, steps_per_epoch: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 4))
        self.pruning, self.steps_per_epoch = pruning, steps_per_epoch

    def training_step(self, batch, batch_idx):
        ids, (x, y) = batch
        per_sample = F.cross_entropy(self.net(x), y, reduction="none")
        return self.pruning.loss(per_sample, ids)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=3 * self.steps_per_epoch + 1)  # 3 epochs
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train(n: int = 120, epochs: int = 3, batch: int = 16, accumulate: int = 1, pruning_cls=PruningCallback, on_ray=False,
          before: tuple = (), ckpt_path: str | None = None):
    """`before`: callbacks listed ahead of PruningCallback (a checkpointing one); `ckpt_path`: resume from it."""
    pruning = pruning_cls("repb", {"rho": 0.6}, num_samples=n, epochs=epochs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = math.ceil(math.ceil(n / world / batch) / accumulate)
    common = dict(max_epochs=epochs, accelerator="cpu", use_distributed_sampler=False, accumulate_grad_batches=accumulate,
                  callbacks=[*before, pruning], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    if on_ray:  # inside a Ray Train worker: Ray's Lightning integration, unchanged for the callback
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
        trainer = prepare_trainer(pl.Trainer(devices="auto", strategy=RayDDPStrategy(),
                                             plugins=[RayLightningEnvironment()], **common))
    else:
        trainer = pl.Trainer(devices=world, num_nodes=1, strategy="ddp" if world > 1 else "auto", **common)
    x, y = images(n)
    model = Classifier(pruning, steps)
    trainer.fit(model, pruning.dataloader(torch.utils.data.TensorDataset(x, y), batch_size=batch), ckpt_path=ckpt_path)
    return pruning, model, trainer


def write_decisions(pruning, trainer, folder: str) -> dict:
    """What this rank decided (plan digest, kept per epoch), written to folder/rank<r>.json."""
    out = {"rank": trainer.global_rank, "digest": pruning.pruner.policy.digest(),
           "kept": [e["kept"] for e in pruning.epochs_log], "epochs": [e["epoch"] for e in pruning.epochs_log]}
    with open(os.path.join(folder, f"rank{trainer.global_rank}.json"), "w") as fh:
        json.dump(out, fh)
    return out


class FailOnce(pl.Callback):
    """Rank 1 raises once at the start of epoch `epoch` (a marker file makes it once): Ray Train restarts
    the worker group from the last checkpoint."""

    def __init__(self, epoch: int, marker: str):
        self.epoch, self.marker = epoch, marker

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch and trainer.global_rank == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError(f"injected failure at epoch {self.epoch}")


def ray_loop(config: dict) -> dict:
    """The Ray Train worker function: the same training, through RayDDPStrategy; each rank writes what it
    decided to config["out"]/rank<r>.json. With config["fail_at_epoch"], Ray's RayTrainReportCallback
    checkpoints every epoch (listed before PruningCallback), rank 1 fails once at that epoch, and the restarted
    workers resume from Ray's last checkpoint."""
    torch.set_num_threads(1)
    fail_at = config.get("fail_at_epoch")
    if fail_at is None:
        p, _, trainer = train(on_ray=True)
        return write_decisions(p, trainer, config["out"])
    import ray.train
    from ray.train.lightning import RayTrainReportCallback
    before = (RayTrainReportCallback(), FailOnce(fail_at, os.path.join(config["out"], "failed")))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        p, _, trainer = train(on_ray=True, before=before)
    else:
        with checkpoint.as_directory() as d:
            p, _, trainer = train(on_ray=True, before=before,
                                  ckpt_path=os.path.join(d, RayTrainReportCallback.CHECKPOINT_NAME))
    return write_decisions(p, trainer, config["out"])


if __name__ == "__main__":  # under torchrun: each rank writes its own file (the ranks share stdout)
    from repb_ray.torch import end_process_group
    p, _, trainer = train()
    write_decisions(p, trainer, sys.argv[1])
    end_process_group()  # Lightning leaves its gloo group alive; at interpreter exit it can abort the process
