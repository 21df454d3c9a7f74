"""PruningTrainer: a Hugging Face `Trainer` that trains each epoch on a pruning policy's plan. The model
keeps returning what it returns; the per-sample loss comes from its outputs (classification, causal LM,
or your function), is weighted by the CTR weights and normalised over the whole accumulated batch;
the scores drive the policy at each epoch's end; the learning-rate schedule follows the real (pruned)
number of steps. Plans come from any EpochSource: a LocalPruner (every rank keeps the policy: plain
scripts, torchrun, accelerate, Ray's HF integration with a torch dataset) or a started PruningSession
(a Ray run's coordinator, batches from the worker's Ray Data shard). Runs in each training process."""

from __future__ import annotations

from collections.abc import Callable

from transformers import Trainer, TrainerCallback

from repb_ray.hf import _compat
from repb_ray.hf.losses import LOSSES
from repb_ray.torch.epoch import EpochSource, EpochSteps
from repb_ray.torch.schedule import RealStepLR

RESERVED = ("id", "weight", "epoch")   # the plan's columns in a batch, not the model's


class PruningTrainer(Trainer):
    """`pruning`: an EpochSource; a LocalPruner reads `train_dataset` (map-style, indexed by sample id
    0..n-1), a PruningSession its worker's "train" shard (or `train_dataset`, a Ray Data shard).
    `per_sample_loss`: "auto" (classification or causal LM from the logits' shape),
    "sequence_classification", "causal_lm", or a function (outputs, labels) -> [B] tensor. Windows and
    the observations' step numbers count optimizer steps (a window of W steps spans W accumulated
    batches of every rank)."""

    def __init__(self, *args, pruning: EpochSource, per_sample_loss: str | Callable = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(pruning, EpochSource):
            raise TypeError(f"pruning must be a repb_ray EpochSource (LocalPruner or a started PruningSession), "
                            f"got {type(pruning).__name__}")
        if isinstance(per_sample_loss, str) and per_sample_loss not in LOSSES:
            raise ValueError(f"per_sample_loss must be one of {', '.join(LOSSES)} or a function, got "
                             f"per_sample_loss={per_sample_loss!r}")
        if self.args.dataloader_drop_last:
            raise ValueError("dataloader_drop_last=True would leave plan samples untrained; every sample of an "
                             "epoch's plan is trained once: set dataloader_drop_last=False")
        self.pruning = pruning
        self.per_sample_loss = LOSSES[per_sample_loss] if isinstance(per_sample_loss, str) else per_sample_loss
        self.loss_is_scaled_for_ga = True  # compute_loss normalises over the whole accumulated batch
        self.steps: EpochSteps | None = None   # this epoch's optimizer steps on this rank
        self._stepped = 0                     # optimizer steps the Trainer took this epoch
        self.epochs_log: list[dict] = []
        self.add_callback(_EpochHooks(self))

    # -- data ---------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        dataset = (_compat.without_unused_columns(self, self.train_dataset)
                   if self.train_dataset is not None else None)
        loader = self.pruning.loader(self.args.per_device_train_batch_size, dataset,
                                     collate_fn=_compat.training_collator(self),
                                     interleave=self.pruning.world_size > 1,  # accelerate shards it round-robin
                                     num_workers=self.args.dataloader_num_workers,
                                     pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)   # a DataLoader is sharded and placed; other loaders pass through

    def _begin_epoch(self, epoch: int) -> None:
        info = self.pruning.begin_epoch(epoch)
        self.steps = EpochSteps(info, self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps)
        self._stepped = 0
        self.steps.start_schedules([self.lr_scheduler])

    def _end_epoch(self, epoch: int) -> None:
        if self._stepped < len(self.steps.groups):  # a pruned epoch's partial last group: the Trainer did not step
            self._step_leftover()
        info = self.steps.info
        self.pruning.end_epoch()
        self.epochs_log.append({**info.log(), "rank_samples": sum(self.steps.groups)})

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
        plan = {k: inputs.pop(k) for k in RESERVED if k in inputs}
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
        if "id" not in plan or "weight" not in plan:
            raise RuntimeError("a training batch without the plan's id and weight: the train loader must be "
                               "PruningTrainer's own (get_train_dataloader)")
        step = self.steps.step
        loss = self.steps.loss(per_sample.float(), plan["weight"].to(per_sample.device, non_blocking=True))
        self._observe(step, plan["id"], per_sample)
        self.steps.advance()
        return (loss, outputs) if return_outputs else loss

    def _observe(self, step: int, ids, per_sample) -> None:
        self.pruning.observe(ids, per_sample.detach(), step)

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
