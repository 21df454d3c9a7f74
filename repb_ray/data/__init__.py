"""Datasets with stable int64 sample ids: Fashion-MNIST, CIFAR-10/100, synthetic arrays."""

from repb_ray.data.arrays import ArraySplit, load_dataset, synthetic

__all__ = ["ArraySplit", "load_dataset", "synthetic"]
