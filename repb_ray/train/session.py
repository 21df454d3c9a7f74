"""PruningSession: the worker side of a pruned run, inside train_loop_per_worker: the epochs once
their plans are published, this rank's batches with their CTR weights, the observed scores, the
coordinator's state saved beside each checkpoint. Runs in every Train worker."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import ray
import ray.train

from repb_ray.core import rng
from repb_ray.core.plan import EpochInfo
from repb_ray.data.mixing import FillingShuffle
from repb_ray.errors import first_line
from repb_ray.layout import state_name
from repb_ray.train.collate import TensorCollate
from repb_ray.train.messages import PlanSummary
from repb_ray.train.pruning import PruningHandle
from repb_ray.train.sender import ObservationSender

PROGRESS_EVERY_S = 1.0   # how often rank 0 tells the coordinator where the epoch is


def nonfinite_score_error(ids: np.ndarray, scores: np.ndarray, epoch: int) -> Exception:
    bad = int(np.argmax(~np.isfinite(scores)))
    return ValueError(f"score {scores[bad]} for sample id {int(ids[bad])} in epoch {epoch}: scores must be finite")


class PruningSession:
    """The EpochSource of a Ray Train worker. Per rank: `start` (rank 0 resets the coordinator), then
    for each epoch `begin_epoch`, the batches of `loader` (or `batches`), `observe` per batch,
    `end_epoch` (or `epochs`, which does both ends)."""

    def __init__(self, handle: PruningHandle, *, rank: int | None = None, world_size: int | None = None):
        self.handle = handle
        self.coordinator = handle.coordinator
        if rank is None or world_size is None:
            ctx = ray.train.get_context()
            rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.rank, self.world_size = rank, world_size
        self.summary: PlanSummary | None = None   # the current epoch's published plan
        self.step = 0                             # the global step within the epoch of the next batch
        self.samples = 0
        self.on_score_error = nonfinite_score_error
        self._sender: ObservationSender | None = None
        self._routing = None
        self._progress_t = 0.0
        self._epoch_start = time.time()

    @property
    def info(self) -> EpochInfo:
        return self.summary.info

    # -- start / save --------------------------------------------------------------------------------
    def start(self, state: str | None = None) -> int:
        """Rank 0 resets the coordinator (from the saved state named in a checkpoint, or afresh) and
        every rank waits for it; returns the epoch the plan is for (1 on a fresh start)."""
        if self.rank == 0:
            ray.get(self.coordinator.reset.remote(state, self.world_size))
        _barrier()
        self._routing = ray.get(self.coordinator.routing.remote())
        self.summary = ray.get(self.coordinator.summary.remote())
        return self.summary.epoch

    def save(self, epochs_done: int, step: int = 0, attempt: int = 0) -> str | None:
        """Rank 0: save the coordinator's state after `epochs_done` epochs (and `step` optimizer steps of the
        next in the run's `attempt`-th start, with their observations: every rank delivered them first) for a
        checkpoint (each shard writes its own file); returns the state's name, to keep in the checkpoint (None without storage)."""
        if self.rank != 0 or not self.handle.stateful:
            return None
        return ray.get(self.coordinator.save.remote(state_name(epochs_done, step, attempt)))

    def deliver(self) -> None:
        """Every observation of this rank so far is in its shard when this returns."""
        if self._sender is not None:
            self._sender.deliver()

    def record_failure(self, epoch: int, step: int, error: BaseException) -> None:
        """This rank's error at (epoch, step), for the coordinator to tell a failure that repeats."""
        text = re.sub(r"0x[0-9a-fA-F]+", "0x?", f"{type(error).__name__}: {first_line(error)}")[:300]  # redacted
        try:
            ray.get(self.coordinator.record_failure.remote(self._routing.generation, epoch, step, text), timeout=10)
        except Exception:  # noqa: BLE001 - the coordinator may be what failed: the error itself goes on
            pass

    def note(self, text: str) -> None:
        """Rank 0: a line for the driver's console (a resume, a resize)."""
        if self.rank == 0 and self.handle.progress is not None:
            self.handle.progress.post.remote({"note": text})

    def state_dict(self) -> dict:
        """Rank 0 saves the coordinator's state as of the current plan: {"coordinator_state": its name}."""
        return {"coordinator_state": self.save(self.summary.epoch - 1)}

    def load_state_dict(self, state: dict) -> None:
        self.start(state.get("coordinator_state"))

    # -- the epochs ----------------------------------------------------------------------------------
    def wait_plan(self, epoch: int) -> PlanSummary:
        self.summary = ray.get(self.coordinator.wait_plan.remote(self._routing.generation, epoch,
                                                                 self.handle.timeout_s))
        return self.summary

    def epochs(self, num_epochs: int, start: int | None = None):
        """Yield the epochs start..num_epochs, each once its plan is published; closing an epoch
        sends the rest of the observations and waits for the next plan."""
        first = start or self.summary.epoch
        for epoch in range(first, num_epochs + 1):
            self.begin_epoch(epoch)
            yield epoch
            self.end_epoch()

    def begin_epoch(self, epoch: int) -> EpochInfo:
        self.wait_plan(epoch)
        self.step, self.samples = 0, 0
        self._epoch_start = time.time()
        self._sender = ObservationSender(self._routing, epoch, self.rank, self.handle.observe_every,
                                         self.on_score_error)
        return self.info

    def end_epoch(self) -> EpochInfo:
        """Send this rank's last observations; returns the next epoch's info once its plan is decided."""
        self._sender.close()
        self._sender = None
        return self.wait_plan(self.summary.epoch + 1).info

    def steps_per_epoch(self, batch_size: int) -> int:
        """This rank's batches in the current epoch (every rank has the same number)."""
        return math.ceil(self.summary.kept / self.world_size / batch_size)

    def batches(self, shard, batch_size: int, device=None, skip: int = 0, *, epoch: int | None = None, then=None):
        """This rank's batches of `epoch` (default: the current plan's) as dicts of tensors ("id" stays on the
        CPU), mixed across blocks by a buffer that fills while it serves (FillingShuffle, seeded by (seed,
        epoch, rank)), so the first batch waits for the first block only; checks they come from this plan.
        Rank 0 names the epoch to the coordinator first (here, before the iteration): its reads may start
        before its plan is decided and wait for it. `then()` runs once the shard has sent its last block (the
        buffer still serves: the next epoch's reads can start there). `skip`: the first batches are read and
        dropped (a run resumed within the epoch: the order is the same on every run, so the position is a
        count). Blocks are taken as Ray Data produces them."""
        epoch = self.summary.epoch if epoch is None else epoch
        if self.rank == 0:
            ray.get(self.coordinator.serve.remote(self._routing.generation, epoch, self.handle.timeout_s))
        return self._batches(shard, batch_size, device, skip, epoch, then)

    def _batches(self, shard, batch_size: int, device, skip: int, epoch: int, then):
        mix = FillingShuffle(batch_size, self.handle.shuffle_rows, rng.shuffle_seed(self.handle.seed, epoch, self.rank))
        collate = TensorCollate(device)
        # no window of blocks: Ray Data yields a block of a window only once the block after it is produced,
        # which would hold back an epoch's first batch (its execution still reads ahead)
        blocks = shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
        for i, rows in enumerate(mix.batches(_then(blocks, then))):
            if i < skip:
                continue
            got = int(rows["epoch"][0])
            if got != epoch:
                raise RuntimeError(f"rank {self.rank} got rows of plan {got} in epoch {epoch}")
            yield collate(rows)

    def loader(self, batch_size: int, dataset=None, *, device=None, **options) -> _EpochBatches:
        """This epoch's batches from `dataset` (this worker's Ray Data shard; default: the "train"
        shard), with a length (the batches of every rank). Ray Data decides the workers and the
        collation, so DataLoader `options` (collate_fn, num_workers, pin_memory, ...) have no use here."""
        return _EpochBatches(self, dataset if dataset is not None else ray.train.get_dataset_shard("train"),
                             batch_size, device)

    def observe(self, ids, scores, step: int | None = None) -> None:
        """Record the batch's per-sample scores (a tensor [B] or float32 numpy) at optimizer step
        `step` of the epoch (default: one step per call); kept on the device until `observe_every`
        steps are sent together (one host copy per chunk)."""
        if isinstance(ids, dict):
            raise TypeError("observe takes the batch's ids: session.observe(batch['id'], scores)")
        ids = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
        if ids.dtype != np.int64:
            raise TypeError(f"the batch's id column has dtype {ids.dtype}; ids must be int64 (0..n-1)")
        if hasattr(scores, "detach"):
            scores = scores.detach()
        step = self.step if step is None else int(step)
        self._sender.add(step, ids, scores)
        self.step = step + 1
        self.samples += ids.shape[0]
        if self.rank == 0 and self.handle.progress is not None:
            now = time.monotonic()
            if now - self._progress_t >= PROGRESS_EVERY_S:
                self._progress_t = now
                self.handle.progress.post.remote({"epoch": self.summary.epoch, "step": self.step,
                                                  "samples": self.samples * self.world_size,
                                                  "kept": self.summary.kept, "start": self._epoch_start})

    def report_epoch(self, metrics: dict) -> None:
        """Rank 0: the epoch's metrics, for the driver's console and tracking."""
        if self.rank == 0 and self.handle.progress is not None:
            self.handle.progress.post.remote({"done": dict(metrics)})


class _EpochBatches:
    """A PruningSession's batches of the current epoch, with the epoch's number of batches as length."""

    def __init__(self, session: PruningSession, shard, batch_size: int, device):
        self.session, self.shard, self.batch_size, self.device = session, shard, batch_size, device

    def __len__(self) -> int:
        return self.session.steps_per_epoch(self.batch_size)

    def __iter__(self):
        return self.session.batches(self.shard, self.batch_size, self.device)


def _then(items, then):
    """`items`, then `then()` once they are exhausted (when given)."""
    yield from items
    if then is not None:
        then()


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
