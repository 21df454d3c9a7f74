"""Synthetic Gaussian clusters: a small learnable problem with easy and hard samples (tests, smoke runs)."""

from __future__ import annotations

import numpy as np

from repb_ray.core import rng as streams
from repb_ray.errors import TaskError
from repb_ray.tasks.classification import ClassificationTask


def clusters(n: int, *, num_classes: int, dim: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = streams.synthetic(seed)
    centres = rng.normal(0, 2.0, size=(num_classes, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = centres[y] + rng.normal(0, noise, size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), y


class Synthetic(ClassificationTask):
    """task_args: size (training samples), num_classes, dim, noise, seed; the test set is size/4 more
    samples of the same clusters."""

    default_model = "mlp"

    def __init__(self, size: int = 512, num_classes: int = 4, dim: int = 16, noise: float = 2.5, seed: int = 0,
                 model: str | None = None, label_noise: float = 0.0, noise_seed: int = 0):
        super().__init__(model, False, label_noise, noise_seed)
        for name, v, lo in (("size", size, 2), ("num_classes", num_classes, 2), ("dim", dim, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TaskError(f"task_args.{name} must be an integer >= {lo}, got {name}={v!r}")
        self.size, self.num_classes, self.dim, self.noise, self.seed = size, num_classes, dim, float(noise), seed
        self.input_shape = (dim,)

    def _all(self):
        return clusters(self.size + max(self.size // 4, 16), num_classes=self.num_classes, dim=self.dim,
                        seed=self.seed, noise=self.noise)

    def arrays(self, split: str):
        x, y = self._all()
        return (x[: self.size], y[: self.size]) if split == "train" else (x[self.size:], y[self.size:])

    def train_dataset(self):
        from repb_ray.data import from_numpy
        x, y = self.arrays("train")
        return from_numpy({"x": x, "y": y}, block_rows=64)

    def test_dataset(self):
        from repb_ray.data import from_numpy
        x, y = self.arrays("test")
        return from_numpy({"x": x, "y": y}, block_rows=32)  # several blocks: every rank evaluates a share
