"""ClassificationTask: the shared base of the built-in image/vector classifiers (cross-entropy per
sample, accuracy), with seeded per-sample augmentation that is a pure function of (epoch, id)."""

from __future__ import annotations

import numpy as np

from repb_ray.core import rng
from repb_ray.core.checks import suggest
from repb_ray.errors import TaskError
from repb_ray.task import Task
from repb_ray.tasks.models import MODELS, build_model


def row_randoms(epoch: np.ndarray, ids: np.ndarray, salt: int) -> np.ndarray:
    """uint64 per row from (epoch, id, salt) by splitmix64: the same whatever the batching."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + epoch.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
        z += np.uint64(salt)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def crop_flip(x: np.ndarray, epoch: np.ndarray, ids: np.ndarray, padding: int = 4) -> np.ndarray:
    """Random `padding`-padded crop and horizontal flip of images [n, C, H, W], drawn per row from
    (epoch, id): resuming or re-batching gives the same augmentation."""
    n, _, h, w = x.shape
    r = row_randoms(epoch, ids, 0xA06)
    span = 2 * padding + 1
    dy, dx = (r % span).astype(np.int64), ((r >> np.uint64(8)) % span).astype(np.int64)
    flip = ((r >> np.uint64(16)) & np.uint64(1)).astype(bool)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode="reflect")
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out[flip] = out[flip][..., ::-1]
    return out


class ClassificationTask(Task):
    """Images or feature vectors with integer labels: columns id, x, y. Subclasses give the data;
    this class gives the model by name, the per-sample cross-entropy and accuracy."""

    num_classes = 10
    input_shape: tuple = ()
    default_model = "cnn"
    mean: tuple | None = None   # per-channel normalisation of uint8 images
    std: tuple | None = None

    def __init__(self, model: str | None = None, augment: bool = False, label_noise: float = 0.0,
                 noise_seed: int = 0):
        model = model or self.default_model
        if model not in MODELS:
            raise TaskError(f"task_args.model must be one of {', '.join(MODELS)}, got model={model!r}{suggest(str(model), MODELS)}")
        if not isinstance(augment, bool):
            raise TaskError(f"task_args.augment must be true or false, got augment={augment!r}")
        if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0.0 <= label_noise < 1.0:
            raise TaskError(f"task_args.label_noise must be a fraction in [0, 1), got label_noise={label_noise!r}")
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
            raise TaskError(f"task_args.noise_seed must be an integer >= 0, got noise_seed={noise_seed!r}")
        self.model_name, self.augment = model, augment
        self.label_noise, self.noise_seed = float(label_noise), noise_seed
        self.subset_seed: int | None = None   # set by a task that draws its training subset

    def noisy_labels(self, ids: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The training labels with a fraction `label_noise` flipped to another class: sample id i is
        flipped iff its draw from (noise_seed, i) is below label_noise, to a class drawn the same way
        (a pure function of the id: any batching, any run, any method sees the same noisy labels).
        The test set is never touched."""
        if not self.label_noise:
            return y
        r = row_randoms(np.full(ids.shape, self.noise_seed, np.int64), ids, 0x1ABE1)
        flip = (r >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < self.label_noise
        shift = 1 + ((r & np.uint64(0xFFFF)) % np.uint64(self.num_classes - 1)).astype(np.int64)
        return np.where(flip, (y + shift) % self.num_classes, y).astype(y.dtype)

    def summary_info(self, num_samples: int) -> dict:
        """The training subset's seed when it was drawn, and the label noise of the training set: its
        fraction, seed, and how many labels were flipped."""
        out: dict = {} if self.subset_seed is None else {"subset_seed": self.subset_seed}
        if not self.label_noise:
            return out
        ids = np.arange(num_samples, dtype=np.int64)
        zeros = np.zeros(num_samples, np.int64)
        flipped = int(np.count_nonzero(self.noisy_labels(ids, zeros) != zeros))
        return {**out, "label_noise": self.label_noise, "noise_seed": self.noise_seed, "labels_flipped": flipped}

    def model(self):
        return build_model(self.model_name, self.input_shape, self.num_classes)

    def input_example(self):
        return np.zeros((2, *self.input_shape), np.float32)

    def features(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8:
            return x.astype(np.float32, copy=False)
        out = x.astype(np.float32) / 255.0
        out -= np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        out /= np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return out

    def preprocess(self, batch: dict) -> dict:
        if self.label_noise:
            batch = {**batch, "y": self.noisy_labels(np.asarray(batch["id"], np.int64), np.asarray(batch["y"]))}
        x = batch["x"]
        if self.augment and x.ndim == 4:
            x = crop_flip(x, batch["epoch"], batch["id"])
        return {**batch, "x": self.features(x)}

    def eval_preprocess(self, batch: dict) -> dict:
        return {**batch, "x": self.features(batch["x"])}

    def loss(self, model, batch):
        import torch.nn.functional as F
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def metrics(self, model, batch):
        import torch.nn.functional as F
        logits = model(batch["x"])
        return {"correct": (logits.argmax(1) == batch["y"]).sum(), "count": batch["y"].shape[0],
                "loss_sum": F.cross_entropy(logits, batch["y"], reduction="sum")}


def subset(n: int | None, name: str) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TaskError(f"task_args.{name} must be a positive integer or null, got {name}={n!r}")
    return n


def check_subset_seed(seed: int | None, train_subset: int | None) -> int | None:
    """task_args.subset_seed, checked: an integer >= 0 that needs train_subset (what it draws)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TaskError(f"task_args.subset_seed must be an integer >= 0 or null, got subset_seed={seed!r}")
    if train_subset is None:
        raise TaskError(f"task_args.subset_seed={seed} draws train_subset images from the training set: set "
                        "task_args.train_subset too, or leave subset_seed out to train on every image")
    return seed


def train_rows(total: int, n: int | None, seed: int | None) -> slice | np.ndarray:
    """The rows of a training set of `total` images that a task trains on: all of them (n None), the
    first n (seed None), or n drawn without replacement from all of them with the seed's own stream,
    in their order in the set (sample ids are places in this list, so the draw renumbers them)."""
    if n is None:
        return slice(None)
    if seed is None:
        return slice(0, n)
    if n > total:
        raise TaskError(f"task_args.train_subset={n} with subset_seed draws from {total} images: set train_subset "
                        f"<= {total}")
    return np.sort(rng.data_subset(seed).choice(total, size=n, replace=False))
