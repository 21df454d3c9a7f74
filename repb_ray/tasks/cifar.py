"""CIFAR-10 and CIFAR-100: 32x32 colour images, ResNet-18 with the CIFAR stem, crop + flip
augmentation. Read through torchvision (data_dir with a local copy, or download=true)."""

from __future__ import annotations

import os

import numpy as np

from repb_ray.errors import TaskError
from repb_ray.paths import cache_dir
from repb_ray.tasks.classification import ClassificationTask, check_subset_seed, subset, train_rows


class _CIFAR(ClassificationTask):
    """task_args: data_dir (holding torchvision's cifar-*-python folder; default ~/.cache/repb_ray),
    download, train_subset / test_subset (first N; with subset_seed, train_subset images drawn by that seed),
    model (resnet18 | cnn | mlp), augment (default true), label_noise / noise_seed."""

    input_shape = (3, 32, 32)
    default_model = "resnet18"
    torchvision_name = ""

    def __init__(self, data_dir: str | None = None, download: bool = False, train_subset: int | None = None,
                 test_subset: int | None = None, model: str | None = None, augment: bool = True,
                 label_noise: float = 0.0, noise_seed: int = 0, subset_seed: int | None = None):
        super().__init__(model, augment, label_noise, noise_seed)
        if data_dir is not None and not os.path.isdir(data_dir):
            raise TaskError(f"task_args.data_dir={data_dir!r} does not exist; point it at the folder that holds "
                            f"torchvision's {self.torchvision_name} data, or set download=true")
        self.root = data_dir or cache_dir()
        self.download = download
        self.train_subset, self.test_subset = subset(train_subset, "train_subset"), subset(test_subset, "test_subset")
        self.subset_seed = check_subset_seed(subset_seed, self.train_subset)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        import torchvision
        cls = getattr(torchvision.datasets, self.torchvision_name)
        try:
            ds = cls(self.root, train=split == "train", download=self.download)
        except RuntimeError as exc:
            raise TaskError(f"task {self.torchvision_name.lower()}: not found under {self.root!r} ({exc}); set "
                            f"task_args.data_dir to a folder with torchvision's {cls.base_folder}/, or download=true "
                            "(needs network)") from None
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, np.int64)

    def train_dataset(self):
        from repb_ray.data import from_numpy
        x, y = self.arrays("train")
        rows = train_rows(len(y), self.train_subset, self.subset_seed)
        return from_numpy({"x": x[rows], "y": y[rows]})

    def test_dataset(self):
        from repb_ray.data import from_numpy
        x, y = self.arrays("test")
        n = self.test_subset or len(y)
        return from_numpy({"x": x[:n], "y": y[:n]}, block_rows=5000)


class CIFAR10(_CIFAR):
    num_classes, torchvision_name = 10, "CIFAR10"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100(_CIFAR):
    num_classes, torchvision_name = 100, "CIFAR100"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
