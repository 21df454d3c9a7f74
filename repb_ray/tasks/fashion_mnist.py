"""Fashion-MNIST (the default task): 60k 28x28 grey images, 10 classes, the small CNN. Served from
Parquet shards prepared once from the idx files (or from memory with source=memory)."""

from __future__ import annotations

import gzip
import os

import numpy as np

from repb_ray.errors import TaskError
from repb_ray.paths import cache_dir
from repb_ray.tasks.classification import ClassificationTask, check_subset_seed, subset, train_rows

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SOURCES = ("parquet", "memory")


def read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory: str, stem: str) -> str | None:
    for sub in ("", "FashionMNIST/raw", "fashion-mnist", "raw"):
        for ext in (".gz", ""):
            p = os.path.join(directory, sub, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def idx_paths(directory: str, split: str) -> list[str] | None:
    """The (images, labels) idx files of `split` under `directory` (gzipped or not, in the usual
    sub-folders), or None when either is missing."""
    paths = [_find(directory, stem) for stem in FILES[split]]
    return paths if all(paths) else None


class FashionMNIST(ClassificationTask):
    """task_args: data_dir (the four idx files; default: the system copy), download (torchvision, needs
    network), train_subset / test_subset (first N samples; with subset_seed, train_subset images drawn from
    all 60k by that seed, e.g. a sweep's seed through seed_keys), model (cnn | mlp | resnet18), augment,
    source (parquet | memory), prepared_dir (where the Parquet shards go; shared storage on a cluster),
    label_noise (the fraction of training labels flipped to another class, seeded by noise_seed)."""

    num_classes, input_shape = 10, (1, 28, 28)
    mean, std = (0.2860,), (0.3530,)

    def __init__(self, data_dir: str | None = None, download: bool = False, train_subset: int | None = None,
                 test_subset: int | None = None, model: str | None = None, augment: bool = False,
                 source: str = "parquet", prepared_dir: str | None = None, label_noise: float = 0.0,
                 noise_seed: int = 0, subset_seed: int | None = None):
        super().__init__(model, augment, label_noise, noise_seed)
        if data_dir is not None and not os.path.isdir(data_dir):
            raise TaskError(f"task_args.data_dir={data_dir!r} does not exist; point it at the folder with the four "
                            "Fashion-MNIST idx files, or leave it out to use the system copy")
        if source not in SOURCES:
            raise TaskError(f"task_args.source must be one of {', '.join(SOURCES)}, got source={source!r}")
        self.data_dir, self.download, self.source = data_dir, download, source
        self.train_subset, self.test_subset = subset(train_subset, "train_subset"), subset(test_subset, "test_subset")
        self.subset_seed = check_subset_seed(subset_seed, self.train_subset)
        on_cluster = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or bool(os.environ.get("RAY_ADDRESS"))
        if prepared_dir is None and source == "parquet" and on_cluster:
            raise TaskError("task 'fashion_mnist' on a Ray cluster: set task_args.prepared_dir to storage every node "
                            "mounts (the Parquet shards are read where the data tasks run), or task_args.source=memory")
        self.prepared_dir = prepared_dir

    def source_files(self, split: str) -> list[str] | None:
        """The idx files this task reads for `split` (None when it would download)."""
        return idx_paths(self.data_dir or SYSTEM_DIR, split)

    def source_key(self) -> str:
        """What the prepared Parquet shards were made from: the train idx files, by path, size and
        modification time (another data_dir, or changed files, make another key)."""
        import hashlib
        files = self.source_files("train")
        if files is None:
            return "download-" + hashlib.sha256(os.path.abspath(self.data_dir or "").encode()).hexdigest()[:12]
        parts = [f"{os.path.abspath(f)}:{os.stat(f).st_size}:{os.stat(f).st_mtime_ns}" for f in files]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, 1, 28, 28], labels int64 [n]) of the whole split."""
        dirs = [self.data_dir] if self.data_dir else [SYSTEM_DIR]
        for d in dirs:
            paths = idx_paths(d, split)
            if paths:
                x, y = (read_idx(p) for p in paths)
                return x[:, None].copy(), y.astype(np.int64)
        if self.download:
            import torchvision
            root = self.data_dir or cache_dir()
            ds = torchvision.datasets.FashionMNIST(root, train=split == "train", download=True)
            return ds.data.numpy()[:, None].copy(), ds.targets.numpy().astype(np.int64)
        raise TaskError(
            f"task 'fashion_mnist': Fashion-MNIST not found in {dirs[0]}; get it with "
            "apt-get install -y dataset-fashion-mnist, or set task_args.data_dir to a folder with the four idx "
            "files, or task_args.download=true (needs network)")

    def train_dataset(self):
        from repb_ray.data import from_numpy, read_parquet
        if self.source == "memory":
            x, y = self.arrays("train")
            rows = train_rows(len(y), self.train_subset, self.subset_seed)
            return from_numpy({"x": x[rows], "y": y[rows]})
        from repb_ray.data.prepare import ensure_prepared
        key, n, seed = self.source_key(), self.train_subset, self.subset_seed
        root = self.prepared_dir or cache_dir("prepared", f"fashion_mnist-{key}")

        def columns():
            x, y = self.arrays("train")
            rows = slice(None) if seed is None else train_rows(len(y), n, seed)
            return {"x": x[rows], "y": y[rows]}
        if seed is None:   # the whole set, once; a subset is its first n ids
            train = ensure_prepared(os.path.join(root, "train"), columns, source=f"fashion_mnist train {key}")
            return read_parquet(train, limit=n)
        part = ensure_prepared(os.path.join(root, f"train-{n}-of-seed-{seed}"), columns,
                               source=f"fashion_mnist train {key} {n} drawn by subset_seed {seed}")
        return read_parquet(part)

    def test_dataset(self):
        from repb_ray.data import from_numpy
        x, y = self.arrays("test")
        n = self.test_subset or len(y)
        return from_numpy({"x": x[:n], "y": y[:n]}, block_rows=5000)
