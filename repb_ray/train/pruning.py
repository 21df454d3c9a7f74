"""RePB in your own Ray Train loop: `Pruning` in the driver (the coordinator and the pruned pipeline
of your dataset) and `PruningSession` in train_loop_per_worker (epochs, batches with their CTR
weights, observed losses, checkpointed state). The framework's own worker loop is built from these.

    pruning = Pruning("repb", num_samples=n, num_workers=2, rho=0.5, window=1, storage=STORAGE, name=NAME)
    trainer = TorchTrainer(loop, datasets={"train": pruning.dataset(ds)}, dataset_config=pruning.data_config(),
                           train_loop_config={"pruning": pruning.handle}, ...)

    def loop(config):
        session = PruningSession(config["pruning"])
        session.start(restored_state_location)          # None on a fresh start
        shard = ray.train.get_dataset_shard("train")
        for epoch in session.epochs(10):
            for batch in session.batches(shard, batch_size=64):
                per_sample = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
                loss = (batch["weight"] * per_sample).mean()
                opt.zero_grad(); loss.backward(); opt.step()
                session.observe(batch, per_sample)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from repb_ray.train import state_store

KEEP_STATES = 3          # coordinator states kept next to the checkpoints (Train keeps 2)
PROGRESS_EVERY_S = 1.0   # how often rank 0 tells the coordinator where the epoch is


@dataclass(frozen=True)
class PruningHandle:
    """What a worker needs: the coordinator, the seed, the state location and the protocol's knobs."""

    coordinator: object
    seed: int
    num_samples: int
    state_location: str | None
    observe_every: int = 32
    timeout_s: float = 600.0
    shuffle_rows: int = 4096
    prefetch_batches: int = 2


class Pruning:
    """Driver side of a pruned run. `policy` and `params` as for repb_ray.core.make_policy;
    `storage` (a path or URI every node reaches, e.g. the Train storage_path) and `name` locate the
    coordinator's saved states; `shards` > 1 spreads the per-sample state over that many actors."""

    def __init__(self, policy: str = "repb", *, num_samples: int, num_workers: int, seed: int = 0,
                 shards: int = 1, storage: str | None = None, name: str = "run", observe_every: int = 32,
                 timeout_s: float = 600.0, shuffle_rows: int = 4096, prefetch_batches: int = 2,
                 chunk: int | None = None, **params):
        from repb_ray.core.policy import policy_class
        from repb_ray.train import coordinator
        policy_class(policy)(num_samples=num_samples, seed=seed, world_size=max(1, num_workers), local=False,
                             **params)  # bad parameters fail here, before any actor starts
        self.coordinator = coordinator.create(policy, num_samples, seed, max(1, num_workers), params,
                                              shards=shards, chunk=chunk)
        location = state_store.join(storage, name, "coordinator") if storage else None
        self.handle = PruningHandle(self.coordinator, seed, num_samples, location, observe_every, timeout_s,
                                    shuffle_rows, prefetch_batches)

    def dataset(self, ds, task_ref=None):
        """Your train dataset (an int64 `id` column 0..n-1), pruned to each epoch's plan; the rows
        carry `weight` (the CTR weight) and `epoch`."""
        from repb_ray.data.pipeline import pruned_dataset
        return pruned_dataset(ds, self.coordinator, task_ref)

    def data_config(self):
        """A ray.train.DataConfig: the train split equal across ranks in a deterministic order; any
        other dataset (evaluation) split without dropping rows."""
        return PlanDataConfig()

    def shutdown(self) -> None:
        import ray
        ray.kill(self.coordinator)


def _data_config_class():
    import ray.train
    from ray.data import ExecutionOptions

    class PlanDataConfig(ray.train.DataConfig):
        """Train: streaming_split(equal=True) with preserve_order (ranks get equal, disjoint, deterministic
        shares: the plan's size is a multiple of the world size). Others: equal=False, every row once."""

        def __init__(self):
            super().__init__(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False)

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=name == "train")):
                    output[i][name] = split
            return output

    return PlanDataConfig


def PlanDataConfig():  # noqa: N802 - a factory with the class's name: ray.train is imported lazily
    return _data_config_class()()


class _Sender:
    """A rank's observations of one epoch: buffered per step, sent every `every` steps as one chunk
    per shard (numbered), then closed with the number of chunks each shard must have received."""

    def __init__(self, routing: dict, front, epoch: int, rank: int, every: int, error):
        self.generation, self.epoch, self.rank, self.every = routing["generation"], epoch, rank, every
        self.error = error
        self.bounds = np.array([b for _, b in routing["bounds"][:-1]], np.int64)
        self.targets = routing["shards"] or [front]
        self.seq = [0] * len(self.targets)
        self.refs: list = []
        self.steps, self.ids, self.scores = [], [], []

    def add(self, step: int, ids: np.ndarray, scores) -> None:
        self.steps.append(step)
        self.ids.append(ids)
        self.scores.append(scores)
        if len(self.steps) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.steps:
            return
        scores = [s if isinstance(s, np.ndarray) else s.to("cpu", non_blocking=False).numpy() for s in self.scores]
        sizes = np.array([len(i) for i in self.ids], np.int64)
        steps = np.array(self.steps, np.int64)
        ids = np.concatenate(self.ids)
        sc = np.concatenate(scores).astype(np.float32, copy=False)
        self.steps, self.ids, self.scores = [], [], []
        if not np.isfinite(sc).all():  # within `every` steps of a NaN, not an epoch later
            raise self.error(ids, sc, self.epoch)
        if len(self.targets) == 1:
            self._send(0, steps, sizes, ids, sc)
            return
        owner = np.searchsorted(self.bounds, ids, side="right")
        run_of = np.repeat(np.arange(steps.shape[0]), sizes)
        for j in np.unique(owner):
            sel = owner == j
            self._send(int(j), steps, np.bincount(run_of[sel], minlength=steps.shape[0]), ids[sel], sc[sel])

    def _send(self, j, steps, sizes, ids, scores) -> None:
        self.refs.append(self.targets[j].observe.remote(self.generation, self.epoch, self.rank, self.seq[j],
                                                        steps, sizes, ids, scores))
        self.seq[j] += 1

    def close(self) -> None:
        import ray
        self.flush()
        for j, target in enumerate(self.targets):
            self.refs.append(target.finish.remote(self.generation, self.epoch, self.rank, self.seq[j]))
        ray.get(self.refs)
        self.refs = []


class PruningSession:
    """Worker side of a pruned run (inside train_loop_per_worker)."""

    def __init__(self, handle: PruningHandle, *, rank: int | None = None, world_size: int | None = None):
        import ray.train
        self.handle = handle
        self.front = handle.coordinator
        if rank is None or world_size is None:
            ctx = ray.train.get_context()
            rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.rank, self.world_size = rank, world_size
        self.plan: dict | None = None      # the current epoch's summary (kept, digest, weights, sizes)
        self.step = 0
        self._sender = None
        self._routing = None
        self._progress_t = 0.0
        self._epoch_start = time.time()
        self.samples = 0
        self.on_score_error = _nonfinite

    # -- start / restore / save ------------------------------------------------------------------
    def start(self, state_location: str | None = None) -> int:
        """Rank 0 resets the coordinator (from a saved state, or afresh) and every rank waits for it;
        returns the epoch the plan is for (1 on a fresh start)."""
        import ray
        if self.rank == 0:
            ray.get(self.front.reset.remote(state_location, self.world_size))
        _barrier()
        self._routing = ray.get(self.front.routing.remote())
        self.plan = ray.get(self.front.summary.remote())
        return int(self.plan["epoch"])

    def save(self, epoch: int) -> str | None:
        """Rank 0: save the coordinator's state for the checkpoint of `epoch` (each shard writes its
        own file) and keep the last few; returns the location to store in the checkpoint."""
        import ray
        if self.rank != 0 or self.handle.state_location is None:
            return None
        location = state_store.join(self.handle.state_location, f"epoch_{epoch:05d}")
        ray.get(self.front.save.remote(location))
        old = [d for d in state_store.list_dirs(self.handle.state_location) if d.startswith("epoch_")][:-KEEP_STATES]
        for d in old:
            state_store.remove_tree(state_store.join(self.handle.state_location, d))
        return location

    # -- the epochs --------------------------------------------------------------------------------
    def wait_plan(self, epoch: int) -> dict:
        import ray
        self.plan = ray.get(self.front.wait_plan.remote(self._routing["generation"], epoch, self.handle.timeout_s))
        return self.plan

    def epochs(self, num_epochs: int, start: int | None = None):
        """Yield the epochs start..num_epochs, each once its plan is published; closing an epoch
        sends the rest of the observations and waits for the next plan."""
        first = start or int(self.plan["epoch"])
        for epoch in range(first, num_epochs + 1):
            self.begin_epoch(epoch)
            yield epoch
            self.end_epoch()

    def begin_epoch(self, epoch: int) -> None:
        self.wait_plan(epoch)
        self.step, self.samples = 0, 0
        self._epoch_start = time.time()
        self._sender = _Sender(self._routing, self.front, epoch, self.rank, self.handle.observe_every,
                               self.on_score_error)

    def end_epoch(self) -> dict:
        """Send this rank's last observations; returns the plan of the next epoch once decided."""
        self._sender.close()
        self._sender = None
        epoch = int(self.plan["epoch"])
        return self.wait_plan(epoch + 1)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.plan["kept"] / self.world_size / batch_size)

    def shuffle_seed(self) -> int:
        """The local shuffle buffer's seed for this rank and epoch."""
        return int(np.random.default_rng([self.handle.seed, int(self.plan["epoch"]), 0xB0F, self.rank]).integers(2**31))

    def batches(self, shard, batch_size: int, device=None, dtypes=None):
        """This rank's batches of the epoch as dicts of tensors ("id" stays on the CPU), shuffled
        across blocks by a buffer seeded by (seed, epoch, rank); checks they come from this plan."""
        epoch = int(self.plan["epoch"])
        collate = TensorCollate(device)
        for batch in shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate,
                                              prefetch_batches=self.handle.prefetch_batches,
                                              local_shuffle_buffer_size=self.handle.shuffle_rows or None,
                                              local_shuffle_seed=self.shuffle_seed() if self.handle.shuffle_rows else None):
            got = batch["epoch"]
            if int(got[0]) != epoch:
                raise RuntimeError(f"rank {self.rank} got rows of plan {int(got[0])} in epoch {epoch}")
            yield batch

    def observe(self, batch: dict, scores) -> None:
        """Record the batch's per-sample scores (a tensor [B] or float32 numpy): kept on the device
        until `observe_every` steps are sent together (one host copy per chunk, not per step)."""
        ids = batch["id"]
        ids = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
        if hasattr(scores, "detach"):
            scores = scores.detach()
        self._sender.add(self.step, ids, scores)
        self.step += 1
        self.samples += ids.shape[0]
        if self.rank == 0:
            now = time.monotonic()
            if now - self._progress_t >= PROGRESS_EVERY_S:
                self._progress_t = now
                self.front.report_progress.remote({"epoch": int(self.plan["epoch"]), "step": self.step,
                                                   "samples": self.samples * self.world_size,
                                                   "kept": self.plan["kept"], "start": self._epoch_start})

    def report_epoch(self, metrics: dict) -> None:
        """Rank 0: the epoch's metrics, for the driver's console."""
        if self.rank == 0:
            self.front.report_progress.remote({"done": dict(metrics)})


class TensorCollate(NumpyBatchCollateFn):
    """Numpy batch -> dict of tensors without copying (read-only Arrow buffers are shared, so tasks
    must not write into their inputs in place); "id" stays on the CPU, the rest goes to `device`
    (from pinned memory, asynchronously, on CUDA)."""

    def __init__(self, device=None):
        import torch
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __call__(self, batch: dict) -> dict:
        import warnings

        import torch
        cuda = self.device.type == "cuda"
        out = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for k, v in batch.items():
                t = torch.as_tensor(v)
                if k != "id" and self.device.type != "cpu":
                    t = (t.pin_memory() if cuda else t).to(self.device, non_blocking=cuda)
                out[k] = t
        return out


def _nonfinite(ids: np.ndarray, scores: np.ndarray, epoch: int) -> Exception:
    bad = int(np.argmax(~np.isfinite(scores)))
    return ValueError(f"score {scores[bad]} for sample id {int(ids[bad])} in epoch {epoch}: scores must be finite")


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def write_state_pointer(directory: str, location: str | None) -> None:
    with open(os.path.join(directory, "coordinator.json"), "w") as fh:
        json.dump({"location": location}, fh)


def read_state_pointer(directory: str) -> str | None:
    path = os.path.join(directory, "coordinator.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)["location"]
