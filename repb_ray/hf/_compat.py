"""Every private Hugging Face Trainer / accelerate API repb_ray.hf uses, in one place, each with why
(checked against transformers 5.25 and accelerate 1.16)."""

from __future__ import annotations


def training_collator(trainer):
    """The Trainer's data collator as its own train loader would use it: wrapped so that the features
    the model's forward does not take are dropped first (Trainer._get_collator_with_removed_columns).
    PruningTrainer builds its own train loader, since its batches come from a plan, not a sampler."""
    return trainer._get_collator_with_removed_columns(trainer.data_collator, description="training")


def without_unused_columns(trainer, dataset):
    """A datasets.Dataset without the columns the model's forward does not take, as the Trainer's own
    loader would serve it (Trainer._remove_unused_columns); other datasets as they are."""
    try:
        import datasets
    except ImportError:
        return dataset
    if isinstance(dataset, datasets.Dataset) and trainer.args.remove_unused_columns:
        return trainer._remove_unused_columns(dataset, description="training")
    return dataset


def sync_gradients(trainer) -> None:
    """Let the optimizer step on the gradients accumulated so far: the Trainer's epoch loop decides
    each micro-batch whether to sync (gradient_state._set_sync_gradients) from the full-data number of
    batches, so after a pruned epoch whose last accumulation group is partial no step is taken."""
    trainer.accelerator.gradient_state._set_sync_gradients(True)
