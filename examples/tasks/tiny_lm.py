"""A tiny causal language model on generated token sequences of varying length (padding id 0).
The per-sample loss is the mean token loss of each sequence, padding masked; the test metric is
perplexity (lower is better)."""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repb_ray import Task
from repb_ray.data import from_numpy


def sequences(n: int, length: int, vocab: int, seed: int):
    """Samples of one noisy Markov chain over tokens 1..vocab-1 (the chain is fixed; `seed` draws the
    samples), lengths between length/2 and length."""
    step = np.random.default_rng(12345).integers(1, vocab - 1, size=vocab)
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, length), np.int64)
    tokens[:, 0] = rng.integers(1, vocab, size=n)
    for t in range(1, length):
        nxt = (tokens[:, t - 1] - 1 + step[tokens[:, t - 1]]) % (vocab - 1) + 1
        noise = rng.random(n) < 0.1
        tokens[:, t] = np.where(noise, rng.integers(1, vocab, size=n), nxt)
    lengths = rng.integers(length // 2, length + 1, size=n)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


class TinyLM(Task):
    metric, mode = "perplexity", "min"

    def __init__(self, size: int = 512, length: int = 24, vocab: int = 32, dim: int = 32, seed: int = 0):
        self.size, self.length, self.vocab, self.dim, self.seed = size, length, vocab, dim, seed

    def train_dataset(self):
        tokens, lengths = sequences(self.size, self.length, self.vocab, self.seed)
        return from_numpy({"tokens": tokens, "length": lengths}, block_rows=128)

    def test_dataset(self):
        tokens, lengths = sequences(self.size // 4, self.length, self.vocab, self.seed + 1)
        return from_numpy({"tokens": tokens, "length": lengths})

    def model(self):
        return _GRULM(self.vocab, self.dim)

    def _token_nll(self, model, batch):
        tokens = batch["tokens"]
        logits = model(tokens[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, self.vocab), tokens[:, 1:].reshape(-1), reduction="none")
        mask = (tokens[:, 1:] != 0).float()
        return nll.view(tokens.shape[0], -1) * mask, mask

    def loss(self, model, batch):
        nll, mask = self._token_nll(model, batch)
        return nll.sum(1) / mask.sum(1).clamp(min=1)   # mean over each sequence's real tokens

    def metrics(self, model, batch):
        nll, mask = self._token_nll(model, batch)
        return {"nll_sum": nll.sum(), "tokens": mask.sum()}

    def summarize(self, sums):
        nll = sums["nll_sum"] / max(sums["tokens"], 1)
        return {"perplexity": math.exp(nll), "loss": nll}


class _GRULM(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(vocab, dim), nn.GRU(dim, dim, batch_first=True), nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(tokens))
        return self.out(h)
