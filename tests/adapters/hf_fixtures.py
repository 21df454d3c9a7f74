"""Tiny Hugging Face models built from configs (no hub downloads) and generated token data, for the
adapter tests and their subprocesses."""

import numpy as np
import torch

VOCAB, LENGTH = 64, 12


def token_data(n: int, seed: int = 0):
    """Sequences of tokens 1..VOCAB-1 with padding (0) at the end; label 1 when token 7 occurs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, LENGTH))
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=n)
    mask = np.arange(LENGTH)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    labels = (ids == 7).any(1).astype(np.int64)
    return ids.astype(np.int64), mask.astype(np.int64), labels


class Classification(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0):
        self.ids, self.mask, self.labels = token_data(n, seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": torch.from_numpy(self.ids[i]), "attention_mask": torch.from_numpy(self.mask[i]),
                "labels": torch.tensor(self.labels[i])}


class LanguageModelling(Classification):
    def __getitem__(self, i):
        ids = torch.from_numpy(self.ids[i])
        return {"input_ids": ids, "attention_mask": torch.from_numpy(self.mask[i]),
                "labels": torch.where(ids == 0, torch.full_like(ids, -100), ids)}


def bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def args(out: str, **kw):
    from transformers import TrainingArguments
    base = dict(output_dir=out, per_device_train_batch_size=16, num_train_epochs=3, learning_rate=0.05,
                report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", use_cpu=True,
                lr_scheduler_type="linear", optim="sgd", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})
