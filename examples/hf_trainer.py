"""RePB in a standard Hugging Face Trainer script: a small BERT-style classifier (built from a config,
no download) on generated token sequences. The lines marked `# repb_ray` are all that changes from the
plain Trainer script; under torchrun or accelerate every process runs this file as it is.

    python examples/hf_trainer.py [--epochs 3] [--rho 0.5] [--samples 2000]
    torchrun --nproc_per_node=2 examples/hf_trainer.py
"""

import argparse

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from repb_ray.hf import LocalPruner, PruningTrainer  # repb_ray (was: from transformers import Trainer)
from repb_ray.torch import end_process_group

VOCAB, LENGTH = 100, 24


class Sequences(torch.utils.data.Dataset):
    """Token sequences labelled 1 when they hold token 7; item i is sample id i."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.ids = rng.integers(1, VOCAB, size=(n, LENGTH))
        self.labels = (self.ids == 7).any(1).astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": torch.from_numpy(self.ids[i]), "attention_mask": torch.ones(LENGTH, dtype=torch.int64),
                "labels": torch.tensor(self.labels[i])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/repb_hf_trainer")
    a = ap.parse_args(argv)
    train_set, eval_set = Sequences(a.samples, 0), Sequences(a.samples // 4, 1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=128, num_labels=2))
    args = TrainingArguments(output_dir=a.out, num_train_epochs=a.epochs, per_device_train_batch_size=32,
                             learning_rate=5e-4, lr_scheduler_type="linear", warmup_steps=10, eval_strategy="epoch",
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
    pruner = LocalPruner("repb", {"rho": a.rho}, num_samples=len(train_set), epochs=a.epochs)  # repb_ray
    trainer = PruningTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                             pruning=pruner)  # repb_ray (was: Trainer(...))
    trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        for e in trainer.epochs_log:
            print(f"epoch {e['epoch']}: trained {e['kept']}/{len(train_set)} samples "
                  f"({e['pruned_fraction']:.1%} pruned)")
        print(f"eval loss {metrics['eval_loss']:.4f}; pruned fraction over {a.epochs} epochs: "
              f"{pruner.pruned_fraction(a.epochs):.3f}")
    end_process_group()  # under torchrun: the Trainer leaves its gloo group alive, which can abort the exit


if __name__ == "__main__":
    main()
