"""An image classifier on a folder of Parquet files with columns id (int64, 0..n-1), png (encoded
image bytes) and label: PNG decoding runs in preprocess, so pruned rows are never decoded.

    repb-ray train --config jobs/configs/smoke.yaml --set task=parquet_images:ParquetImages \\
        --set task_args.path=DIR/train --set task_args.test_path=DIR/test   (from examples/tasks)
"""

import io

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from repb_ray import Task
from repb_ray.data import read_parquet


class ParquetImages(Task):
    def __init__(self, path: str, test_path: str | None = None, num_classes: int = 10, mean: float = 0.286,
                 std: float = 0.353):
        self.path, self.test_path, self.num_classes, self.mean, self.std = path, test_path, num_classes, mean, std

    def train_dataset(self):
        return read_parquet(self.path)

    def test_dataset(self):
        return read_parquet(self.test_path) if self.test_path else None

    def preprocess(self, batch):
        from PIL import Image
        images = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in batch.pop("png")])
        batch["x"] = ((images[:, None].astype(np.float32) / 255.0) - self.mean) / self.std
        return batch

    def model(self):
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                             nn.Flatten(), nn.Linear(32 * 16, self.num_classes))

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["label"], reduction="none")

    def metrics(self, model, batch):
        logits = model(batch["x"])
        return {"correct": (logits.argmax(1) == batch["label"]).sum(), "count": len(batch["label"]),
                "loss_sum": F.cross_entropy(logits, batch["label"], reduction="sum")}
