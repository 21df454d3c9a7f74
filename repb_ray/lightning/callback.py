"""PruningCallback: a Lightning callback that trains each epoch on a pruning policy's plan. It makes the train
loader (this rank's batches of the plan, `dataloader`), weights each batch's per-sample loss in your
training_step (`loss`, which also records the scores), decides the next plan when the epoch ends (every
rank reaches the same one), and makes a step-wise LR scheduler follow the real (pruned) steps. Its state
rides in Lightning's checkpoints: a run resumes from one saved at an epoch's end or within an epoch (then
each rank's loader starts after the batches it trained). Runs in each training process."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from repb_ray.torch.dataset import IndexedDataset
from repb_ray.torch.epoch import EpochSteps
from repb_ray.torch.pruner import LocalPruner, RankBatchSampler
from repb_ray.torch.schedule import RealStepLR


class PruningCallback(pl.Callback):
    """`PruningCallback("repb", {"rho": 0.5}, num_samples=len(train_set), epochs=max_epochs)`. In the module:
    `loss = pruning.loss(per_sample, ids)` with the ids of the batch (`dataloader` yields (ids, item)
    pairs, as repb_ray.torch.IndexedDataset does). Trainer: `callbacks=[pruning]`,
    `use_distributed_sampler=False` (the plan decides each rank's samples)."""

    def __init__(self, policy: str = "repb", policy_args: dict | None = None, *, num_samples: int, epochs: int,
                 seed: int = 0, target_pruned: float | None = None):
        super().__init__()
        self.pruner = LocalPruner(policy, policy_args, num_samples=num_samples, epochs=epochs, seed=seed,
                                  target_pruned=target_pruned)
        self.batch_size: int | None = None
        self.accumulate = 1
        self.steps: EpochSteps | None = None   # this epoch's optimizer steps on this rank
        self._decided = True  # the epoch's next plan is decided (at its last batch, before any epoch-end hook)
        self.epochs_log: list[dict] = []

    # -- what the user's code calls -------------------------------------------------------------------
    def dataloader(self, dataset, batch_size: int, **kwargs) -> torch.utils.data.DataLoader:
        """The train loader: batches (ids, item) of the current plan for this rank (made at first use,
        when Lightning has started its processes)."""
        self.batch_size = batch_size
        return _PlanLoader(IndexedDataset(dataset), batch_sampler=_LazyRankBatches(self), **kwargs)

    def loss(self, per_sample: torch.Tensor, ids) -> torch.Tensor:
        """The CTR-weighted loss of this batch, normalised so the optimizer step averages over its
        whole (accumulated) batch; records the scores for the policy."""
        if per_sample.ndim != 1 or per_sample.shape[0] != len(ids):
            raise ValueError(f"loss(per_sample, ids) needs one loss per sample: got shape {list(per_sample.shape)} "
                             f"for {len(ids)} ids (use reduction='none')")
        step = self.steps.step
        loss = self.steps.loss(per_sample.float(), self.pruner.weights(ids, per_sample.device))
        self.pruner.observe(ids, per_sample, step)
        self.steps.advance()
        # Lightning divides the loss by accumulate_grad_batches: undo it, so each group is its own mean
        return loss * self.accumulate

    # -- Lightning's hooks ---------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer._accelerator_connector.use_distributed_sampler and trainer.world_size > 1:
            raise ValueError("repb_ray.lightning.PruningCallback decides each rank's samples: build the Trainer with "
                             "use_distributed_sampler=False")
        self.pruner.bind(trainer.global_rank, trainer.world_size)
        self.accumulate = int(trainer.accumulate_grad_batches)

    def on_train_start(self, trainer, pl_module) -> None:
        per_epoch = self.pruner.steps_in_epoch(self._batch(), self.accumulate)
        for config in trainer.lr_scheduler_configs:
            if config.interval == "step" and not isinstance(config.scheduler, RealStepLR):
                config.scheduler = RealStepLR(config.scheduler, steps_per_epoch=per_epoch)
        if self.pruner.batches_done:   # resumed within an epoch: Lightning does not start that epoch again
            self._begin(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._begin(trainer)

    def _begin(self, trainer) -> None:
        """Start the policy's epoch (a resumed run trains the plan it is at), after the batches trained
        before a resume within it (the schedule's position then came with the checkpoint)."""
        done = self.pruner.batches_done
        self.steps = EpochSteps(self.pruner.begin_epoch(), self._batch(), self.accumulate)
        self._decided = False
        self.steps.start((config.scheduler for config in trainer.lr_scheduler_configs), resumed_after=done)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.steps.done and not self._decided:
            self._decide()  # the epoch's last batch: decided before any callback's epoch end (a checkpoint)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._decided:
            self._decide()
        pl_module.log("pruned_fraction", self.epochs_log[-1]["pruned_fraction"], rank_zero_only=True)

    def _decide(self) -> None:
        self.pruner.end_epoch()
        self._decided = True
        self.epochs_log.append(self.steps.info.log())

    def _batch(self) -> int:
        if self.batch_size is None:
            raise RuntimeError("build the train loader with pruning.dataloader(dataset, batch_size)")
        return self.batch_size

    def state_dict(self) -> dict:
        """The policy's state (its epoch included; within an epoch, this rank's position and scores) as
        plain types and tensors: a Lightning checkpoint holding it loads with torch.load(weights_only=True)."""
        within = 0 if self._decided else self.steps.micro
        return {"policy": self.pruner.state_dict(batches_done=within), "epochs_log": [dict(e) for e in self.epochs_log]}

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state["policy"])
        self.epochs_log = [dict(e) for e in state.get("epochs_log", [])]


class _PlanLoader(torch.utils.data.DataLoader):
    """The train loader. It resumes (Lightning asks a loader for `state_dict`/`load_state_dict` before it
    trusts it within an epoch): the position is the callback's, so the loader's own state is empty."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _LazyRankBatches:
    """RankBatchSampler of the callback's pruner and batch size, resolved at each epoch's iteration."""

    def __init__(self, owner: PruningCallback):
        self.owner = owner

    def __iter__(self):
        return iter(RankBatchSampler(self.owner.pruner, self.owner._batch()))

    def __len__(self) -> int:
        return len(RankBatchSampler(self.owner.pruner, self.owner._batch()))


