"""PruningTrainer: a Hugging Face `Trainer` that trains each epoch on a pruning policy's plan. The model
keeps returning what it returns; the per-sample loss comes from its outputs (classification, causal LM,
or your function), is weighted by the CTR weights and normalised over the whole accumulated batch;
the scores drive the policy at each epoch's end; the learning-rate schedule follows the real (pruned)
number of steps. Plans come from any EpochSource: a LocalPruner (every rank keeps the policy: plain
scripts, torchrun, accelerate, Ray's HF integration with a torch dataset) or a started PruningSession
(a Ray run's coordinator, batches from the worker's Ray Data shard). With a LocalPruner it resumes from
the Trainer's own checkpoints, within an epoch too. Runs in each training process."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from repb_ray.hf import _compat
from repb_ray.hf.losses import LOSSES
from repb_ray.torch.epoch import EpochSource, EpochSteps
from repb_ray.torch.pruner import LocalPruner
from repb_ray.torch.schedule import RealStepLR

RESERVED = ("id", "weight", "epoch")   # the plan's columns in a batch, not the model's
STATE_FILE = "repb_pruning_rank{rank}.pt"   # in each Trainer checkpoint: a rank's pruning state


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
        self._decided = True                  # the current epoch's next plan is decided
        self.epochs_log: list[dict] = []
        self.add_callback(_EpochHooks(self))

    # -- data ---------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        dataset = (_compat.without_unused_columns(self, self.train_dataset)
                   if self.train_dataset is not None else None)
        loader = self.pruning.loader(self.args.per_device_train_batch_size, dataset,
                                     collate_fn=_compat.training_collator(self),
                                     interleave=self.pruning.world_size > 1,  # accelerate shards it round-robin
                                     first_epoch_length=True,  # the Trainer's step counts: a resumed run's too
                                     num_workers=self.args.dataloader_num_workers,
                                     pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)   # a DataLoader is sharded and placed; other loaders pass through

    def _begin_epoch(self, epoch: int) -> None:
        info = self.pruning.begin_epoch(epoch)
        self.steps = EpochSteps(info, self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps)
        self._decided = False
        self.steps.start([self.lr_scheduler], resumed_after=getattr(self.pruning, "batches_done", 0))
        self._stepped = self.steps.step

    def _end_epoch(self) -> None:
        if self._stepped < len(self.steps.groups):  # a pruned epoch's partial last group: the Trainer did not step
            self._step_leftover()
        info = self.steps.info
        self.pruning.end_epoch()
        self._decided = True
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

    # -- checkpoints --------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """As the Trainer's; `resume_from_checkpoint` (a checkpoint folder, or True for the last one in
        output_dir) also restores the pruning state saved beside it: the run continues at the plan and
        the batch where the checkpoint was saved."""
        if resume_from_checkpoint:
            resume_from_checkpoint = self._load_pruning(resume_from_checkpoint)
        return super().train(resume_from_checkpoint or None, *args, **kwargs)

    def _save_pruning(self, folder: str) -> None:
        """Write this rank's pruning state into the checkpoint the Trainer just saved."""
        if not isinstance(self.pruning, LocalPruner):
            return   # a PruningSession's state is its Ray run's, saved by the run's own checkpoints
        if not os.path.isdir(folder):
            raise RuntimeError(f"the Trainer saved no checkpoint at {folder}: PruningTrainer saves its pruning state in "
                               "output_dir/checkpoint-<step> (a hyperparameter search's folders are not supported)")
        state = {"pruning": self.pruning.state_dict(batches_done=0 if self._decided else self.steps.micro),
                 "epochs_log": [dict(e) for e in self.epochs_log]}
        torch.save(state, os.path.join(folder, STATE_FILE.format(rank=self.pruning.rank)))

    def _load_pruning(self, checkpoint) -> str:
        if not isinstance(self.pruning, LocalPruner):
            raise ValueError("resume_from_checkpoint needs a LocalPruner: a PruningSession's plans and scores are its "
                             "Ray run's, which resumes from its own checkpoints (repb-ray run --resume)")
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True, and output_dir={self.args.output_dir!r} has no "
                                 "checkpoint-<step> folder: pass the checkpoint's folder")
        path = os.path.join(checkpoint, STATE_FILE.format(rank=self.pruning.rank))
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no pruning state ({os.path.basename(path)}): it was not saved by a "
                             "PruningTrainer with a LocalPruner, or by as many processes as this run has")
        state = torch.load(path, weights_only=True)   # plain types and tensors only
        self.pruning.load_state_dict(state["pruning"])
        self.epochs_log = [dict(e) for e in state["epochs_log"]]
        return checkpoint

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        """The Trainer's own (a private method, checked against transformers 5.25), except where a resumed run
        stands: the Trainer reckons it from full-data steps per epoch, pruned epochs are shorter; the epoch
        and the batches trained in it are the pruner's."""
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        if resume_from_checkpoint is None:
            return epochs_trained, steps_trained
        return len(self.epochs_log), self.pruning.batches_done

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """The loader as it is: the pruner's loader of a resumed epoch already starts after the batches
        trained (the Trainer still counts them, and restores the RNG state after the first batch)."""
        return dataloader


class _EpochHooks(TrainerCallback):
    """The epoch boundaries of a PruningTrainer (epochs are 1-based for the policy)."""

    def __init__(self, trainer: PruningTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch(len(self.trainer.epochs_log) + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._stepped += 1
        if self.trainer.steps.done and not self.trainer._decided:
            self.trainer._end_epoch()   # the epoch's last step: decided before a checkpoint saves the state

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.trainer._decided:
            self.trainer._end_epoch()

    def on_save(self, args, state, control, **kwargs):
        self.trainer._save_pruning(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
