"""In-memory datasets (numpy arrays + stable ids) and the loaders that find them on disk."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# per-channel mean and std used to normalise images to float32
_NORMALISE = {"fashion_mnist": ((0.2860,), (0.3530,)),
              "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
              "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


@dataclass(frozen=True)
class ArraySplit:
    """x: uint8 [n, C, H, W] images or float32 [n, d] features; y: int64 [n]; ids are 0..n-1."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def subset(self, n: int | None) -> "ArraySplit":
        if n is None or n >= len(self):
            return self
        return ArraySplit(self.x[:n], self.y[:n], self.num_classes, self.name)

    def features(self, x: np.ndarray) -> np.ndarray:
        return to_features(self.name, x)


def to_features(dataset: str, x: np.ndarray) -> np.ndarray:
    """float32 model input for rows of a dataset (uint8 images are scaled and normalised)."""
    if x.dtype != np.uint8:
        return x.astype(np.float32, copy=False)
    mean, std = _NORMALISE[dataset]
    out = x.astype(np.float32) / 255.0
    out -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    out /= np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return out


def synthetic(n: int, *, num_classes: int = 4, dim: int = 16, seed: int = 0, noise: float = 2.5) -> ArraySplit:
    """Gaussian clusters: a small learnable problem with easy and hard samples."""
    rng = np.random.default_rng([seed, 7])
    centres = rng.normal(0, 2.0, size=(num_classes, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = centres[y] + rng.normal(0, noise, size=(n, dim)).astype(np.float32)
    return ArraySplit(x.astype(np.float32), y, num_classes, "synthetic")


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: str, stem: str) -> str | None:
    for sub in ("", "FashionMNIST/raw", "fashion-mnist", "raw"):
        for ext in (".gz", ""):
            p = os.path.join(directory, sub, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def _fashion_mnist(data_dir: str | None, download: bool) -> tuple[ArraySplit, ArraySplit]:
    tried = []
    for d in ([data_dir] if data_dir else []) + [FASHION_MNIST_SYSTEM_DIR]:
        paths = [_find_idx(d, s) for split in ("train", "test") for s in _FMNIST_FILES[split]]
        tried.append(d)
        if all(paths):
            tx, ty, vx, vy = (_read_idx(p) for p in paths)
            return (ArraySplit(tx[:, None].copy(), ty.astype(np.int64), 10, "fashion_mnist"),
                    ArraySplit(vx[:, None].copy(), vy.astype(np.int64), 10, "fashion_mnist"))
    if download:
        import torchvision
        root = data_dir or os.path.expanduser("~/.cache/repb_ray")
        tr = torchvision.datasets.FashionMNIST(root, train=True, download=True)
        te = torchvision.datasets.FashionMNIST(root, train=False, download=True)
        return (ArraySplit(tr.data.numpy()[:, None].copy(), tr.targets.numpy().astype(np.int64), 10, "fashion_mnist"),
                ArraySplit(te.data.numpy()[:, None].copy(), te.targets.numpy().astype(np.int64), 10, "fashion_mnist"))
    raise FileNotFoundError(
        "Fashion-MNIST not found (looked in: " + ", ".join(tried) + "). Get it one of three ways: "
        "(1) apt-get install -y dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist/); "
        "(2) --set data_dir=DIR with the four idx files (.gz or not); "
        "(3) --set download=true to let torchvision download it (needs network)")


def _cifar(name: str, data_dir: str | None, download: bool) -> tuple[ArraySplit, ArraySplit]:
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = data_dir or os.path.expanduser("~/.cache/repb_ray")
    try:
        tr, te = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"{name} not found under {root!r} ({exc}). Either (1) --set data_dir=DIR holding torchvision's "
            f"{cls.base_folder}/ folder, or (2) --set download=true to download it (needs network)") from None
    k = 10 if name == "cifar10" else 100

    def split(ds):
        return ArraySplit(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, np.int64), k, name)
    return split(tr), split(te)


def load_dataset(name: str, *, data_dir: str | None = None, download: bool = False,
                 synthetic_size: int = 512, seed: int = 0) -> tuple[ArraySplit, ArraySplit]:
    """(train, test) splits; ids are row numbers of the train split."""
    if name == "fashion_mnist":
        return _fashion_mnist(data_dir, download)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, data_dir, download)
    if name == "synthetic":
        full = synthetic(synthetic_size + max(synthetic_size // 4, 16), seed=seed)
        n = synthetic_size
        return (ArraySplit(full.x[:n], full.y[:n], full.num_classes, "synthetic"),
                ArraySplit(full.x[n:], full.y[n:], full.num_classes, "synthetic"))
    raise ValueError(f"unknown dataset {name!r}; choose fashion_mnist, cifar10, cifar100 or synthetic")
