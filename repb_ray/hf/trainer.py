"""PruningTrainer: a Hugging Face `Trainer` that trains each epoch on a pruning policy's plan. The model
keeps returning what it returns; the per-sample loss comes from its outputs (classification, causal LM,
or your function), is weighted by the CTR weights and normalised over the whole accumulated batch;
the scores drive the policy at each epoch's end; the learning-rate schedule follows the real (pruned)
number of steps. Plans come from a LocalPruner (every rank keeps the policy: plain scripts, torchrun,
accelerate, Ray's HF integration with a torch dataset) or from a Ray run's coordinator over Ray Data
(RayPlans). Runs in each training process."""

from __future__ import annotations

import collections
from collections.abc import Callable

import torch
from transformers import Trainer, TrainerCallback

from repb_ray.hf import _compat
from repb_ray.hf.losses import LOSSES
from repb_ray.torch.pruner import LocalPruner, RankBatchSampler
from repb_ray.torch.schedule import RealStepLR
from repb_ray.torch.step import group_sizes

RESERVED = ("id", "weight", "epoch")


class RayPlans:
    """Plans from a Ray run's coordinator: `session` is this worker's PruningSession, started (the
    Trainer asks for the first epoch's length before training), `shard` its Ray Data shard of the
    pruned train set (rows tokenized to fixed shapes)."""

    def __init__(self, session, shard):
        if session.plan is None:
            raise ValueError("start the PruningSession (session.start(...)) before building the Trainer")
        self.session, self.shard = session, shard


class _RayEpochLoader:
    """This rank's batches of the current epoch from Ray Data, as Trainer inputs; their ids and weights
    wait in a queue for compute_loss. Its length is the current epoch's number of batches."""

    def __init__(self, plans: RayPlans, batch_size: int, queue: collections.deque):
        self.plans, self.batch_size, self.queue = plans, batch_size, queue

    def __len__(self) -> int:
        return self.plans.session.steps_per_epoch(self.batch_size)

    def __iter__(self):
        for batch in self.plans.session.batches(self.plans.shard, self.batch_size):
            self.queue.append((batch["id"], batch["weight"]))
            yield {k: v for k, v in batch.items() if k not in RESERVED}


class PruningTrainer(Trainer):
    """`pruning`: a LocalPruner (its train_dataset is a map-style dataset indexed by sample id 0..n-1) or
    RayPlans. `per_sample_loss`: "auto" (classification or causal LM from the logits' shape),
    "sequence_classification", "causal_lm", or a function (outputs, labels) -> [B] tensor. Windows and
    the observations' step numbers count optimizer steps (a window of W steps spans W accumulated
    batches of every rank)."""

    def __init__(self, *args, pruning: LocalPruner | RayPlans, per_sample_loss: str | Callable = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(pruning, (LocalPruner, RayPlans)):
            raise TypeError(f"pruning must be a repb_ray LocalPruner or RayPlans, got {type(pruning).__name__}")
        if isinstance(per_sample_loss, str) and per_sample_loss not in LOSSES:
            raise ValueError(f"per_sample_loss must be one of {', '.join(LOSSES)} or a function, got "
                             f"per_sample_loss={per_sample_loss!r}")
        if self.args.dataloader_drop_last:
            raise ValueError("dataloader_drop_last=True would leave plan samples untrained; every sample of an "
                             "epoch's plan is trained once: set dataloader_drop_last=False")
        self.pruning = pruning
        self.per_sample_loss = LOSSES[per_sample_loss] if isinstance(per_sample_loss, str) else per_sample_loss
        self.loss_is_scaled_for_ga = True  # compute_loss normalises over the whole accumulated batch
        self._pending: collections.deque = collections.deque()  # (ids, weights) of the batches ahead
        self._micro = 0
        self._stepped = 0          # optimizer steps the Trainer took this epoch
        self._groups: list[int] = []
        self.epochs_log: list[dict] = []
        self.add_callback(_EpochHooks(self))

    # -- data ---------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        batch = self.args.per_device_train_batch_size
        if isinstance(self.pruning, RayPlans):
            return _RayEpochLoader(self.pruning, batch, self._pending)
        dataset = _compat.without_unused_columns(self, self.train_dataset)
        pruner = self.pruning
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=RankBatchSampler(pruner, batch, interleave=pruner.world_size > 1),
            collate_fn=_compat.training_collator(self), num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def _begin_epoch(self, epoch: int) -> None:
        batch, accum = self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps
        if isinstance(self.pruning, RayPlans):
            session = self.pruning.session
            info = session.begin_epoch(epoch)
            per_rank = info.kept // session.world_size
        else:
            per_rank = len(self.pruning.plan) // self.pruning.world_size
            self._pending.clear()
            self._pending.extend((ids, None) for ids in self.pruning.rank_batches(batch))
        self._groups = group_sizes(per_rank, batch, accum)
        self._micro = self._stepped = 0
        if isinstance(self.lr_scheduler, RealStepLR):
            self.lr_scheduler.start_epoch(epoch, len(self._groups))

    def _end_epoch(self, epoch: int) -> None:
        if self._stepped < len(self._groups):  # a pruned epoch's partial last group: the Trainer did not step
            self._step_leftover()
        kept = sum(self._groups)
        if isinstance(self.pruning, RayPlans):
            nxt = self.pruning.session.end_epoch()
            kept_all, n = self.pruning.session.plan.plan_sizes[epoch - 1], nxt.num_samples
        else:
            kept_all, n = len(self.pruning.plan), self.pruning.policy.num_samples
            self.pruning.end_epoch()
        self.epochs_log.append({"epoch": epoch, "kept": kept_all, "pruned_fraction": 1.0 - kept_all / n,
                                "rank_samples": kept})

    def _step_leftover(self) -> None:
        _compat.sync_gradients(self)
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.model.zero_grad()
        self.state.global_step += 1

    # -- the schedule -------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler for the full-data step count, made to follow the real steps."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if not isinstance(scheduler, RealStepLR):
            epochs = max(1, int(round(self.args.num_train_epochs)))
            self.lr_scheduler = RealStepLR(scheduler, steps_per_epoch=max(1, num_training_steps // epochs))
        return self.lr_scheduler

    # -- the loss -----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("PruningTrainer needs labels in every batch (the per-sample loss is computed from them)")
        outputs = model(**inputs)
        per_sample = self.per_sample_loss(outputs, labels)
        n = int(labels.shape[0])
        if per_sample.ndim != 1 or per_sample.shape[0] != n:
            raise ValueError(f"per_sample_loss returned shape {list(per_sample.shape)}, expected [{n}] (one loss per "
                             "sample, not reduced)")
        if not model.training:  # evaluation: the plain mean, nothing observed
            loss = per_sample.float().mean()
            return (loss, outputs) if return_outputs else loss
        ids, weights = self._pending.popleft()
        if len(ids) != n:
            raise RuntimeError(f"the batch has {n} samples but the plan's next batch has {len(ids)}; the train loader "
                               "must serve the plan's batches in order")
        weights = (self.pruning.weights(ids, per_sample.device) if weights is None
                   else weights.to(per_sample.device, non_blocking=True))
        step = self._micro // self.args.gradient_accumulation_steps
        loss = (weights.float() * per_sample.float()).sum() / self._groups[step]
        self._observe(step, ids, per_sample)
        self._micro += 1
        return (loss, outputs) if return_outputs else loss

    def _observe(self, step: int, ids, per_sample: torch.Tensor) -> None:
        if isinstance(self.pruning, RayPlans):
            self.pruning.session.observe({"id": ids}, per_sample.detach(), step)
        else:
            self.pruning.observe(step, ids, per_sample)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            raise ValueError("PruningTrainer does not resume from a Trainer checkpoint yet (the Trainer counts "
                             "epochs by full-data steps, pruned epochs are shorter); train again from the start")
        return super().train(None, *args, **kwargs)


class _EpochHooks(TrainerCallback):
    """The epoch boundaries of a PruningTrainer (epochs are 1-based for the policy)."""

    def __init__(self, trainer: PruningTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch(len(self.trainer.epochs_log) + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._stepped += 1

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._end_epoch(len(self.trainer.epochs_log) + 1)
