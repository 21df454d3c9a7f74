"""IndexedDataset: wraps any map-style dataset so each item carries its int64 sample id."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """`ds[i]` -> `(i, ds_inner[i])`; with the default collate a batch is `(ids int64, items)`."""

    def __init__(self, dataset):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"IndexedDataset needs a map-style dataset (with __getitem__ and __len__), "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return torch.tensor(int(index), dtype=torch.int64), self.dataset[index]
