"""Evaluator: the test-set evaluation of an epoch, either at once (sync) or on a snapshot of the weights in
a thread while the next epoch trains (async); the per-rank sums are reduced across ranks on the calling
thread (collectives never run in the thread); each rank keeps the test batches it read the first time
when every rank's share fits the cache. Test batches arrive on the CPU and are copied to the device by
the evaluation itself, on the stream its kernels run on, so every kernel is ordered after its inputs'
copy. Runs in every Train worker."""

from __future__ import annotations

import copy
import os
import threading

import torch

from repb_ray.config import EVAL_MODES
from repb_ray.task import summarize_metrics
from repb_ray.torch.step import metric_sums, reduce_metric_sums, reduce_sums

_CACHE_OK = "__repb_cache_ok"  # reduced with the sums: how many ranks could keep their share
LOW_PRIORITY = 19              # the nice value of an evaluation thread on a CPU worker


def _nbytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))


def evaluation_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch `epoch` of `epochs` is evaluated: every `every`-th epoch, and the last."""
    return epoch % every == 0 or epoch == epochs


def resolve_eval_mode(mode: str) -> str:
    """`auto` resolved: async on every device, a CPU whose cores all train included (measured in
    docs/results.md, "The epoch boundary"); async and sync are kept as they are."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got eval_mode={mode!r}")
    return "async" if mode == "auto" else mode


def to_device(batch: dict, device: torch.device) -> dict:
    """A CPU batch on `device`, copied on the current stream ("id" stays on the CPU)."""
    if device.type == "cpu":
        return batch
    cuda = device.type == "cuda"
    return {k: v if k == "id" or not isinstance(v, torch.Tensor) else
            (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) for k, v in batch.items()}


class Evaluator:
    """`start(epoch, model)` begins the evaluation of the weights `model` holds now; `result()` returns
    (epoch, metrics) once they are known and reduced over ranks (every rank calls it, in the same order).
    Async: the weights are copied into a second model (allocated with the evaluator, so a model whose
    copy does not fit fails before the first epoch, not after it; filled on the device, ordered before
    the next update) and evaluated in one background thread (Task.metrics then runs in that thread);
    the training thread goes on. `batches_fn` yields CPU batches. `mode` auto: see resolve_eval_mode."""

    def __init__(self, task, batches_fn, device, *, precision: str = "fp32", mode: str = "async",
                 cache_bytes: int = 0, world_size: int = 1, model=None):
        self.task, self.make_batches, self.device, self.precision = task, batches_fn, torch.device(device), precision
        self.mode = resolve_eval_mode(mode)
        self.cache_bytes, self.world_size = cache_bytes, world_size
        self.cached: list | None = None   # this rank's test batches, once every rank's share is known to fit
        self._filling: list | None = None
        self._copy = None
        self._thread: threading.Thread | None = None
        self._epoch: int | None = None
        self._sums: dict | None = None
        self._error: BaseException | None = None
        self._go: threading.Event | None = None
        if self.mode == "async" and model is not None:
            self._copy = copy.deepcopy(model)

    def _batches(self):
        """The cached share, or the test shard read again (kept while it fits, for result() to decide)."""
        if self.cached is not None:
            yield from self.cached
            return
        keep: list | None = [] if self.cache_bytes > 0 else None
        size = 0
        for batch in self.make_batches():
            batch = to_device(batch, self.device)
            if keep is not None:
                size += _nbytes(batch)
                if size <= self.cache_bytes:
                    keep.append(batch)
                else:
                    keep = None
            yield batch
        self._filling = keep

    @property
    def pending(self) -> int | None:
        """The epoch whose evaluation was started and not yet collected (None when none is)."""
        return self._epoch

    def start(self, epoch: int, model) -> None:
        assert self._epoch is None, f"the evaluation of epoch {self._epoch} was not collected"
        self._epoch, self._sums, self._error = epoch, None, None
        if self.mode == "sync":
            self._sums = metric_sums(self.task, model, self._batches(), self.device, self.precision)
            return
        if self._copy is None:
            self._copy = copy.deepcopy(model)
        else:
            with torch.no_grad():
                self._copy.load_state_dict(model.state_dict())
        stream = None
        if self.device.type == "cuda":
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy comes first
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stream, self._go), name=f"repb-eval-{epoch}",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Let a started async evaluation run: the training loop calls it once the next epoch's first batch
        is in hand, so the evaluation never competes with the epoch boundary (result() releases it too)."""
        if self._go is not None:
            self._go.set()

    def _run(self, stream, go: threading.Event) -> None:
        try:
            go.wait()
            if self.device.type == "cpu" and hasattr(os, "setpriority"):
                # this thread only (a Linux thread has its own nice value): training keeps the cores it holds,
                # the evaluation takes what training leaves idle
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)
            if stream is not None:  # the batches' copies are issued in this stream too: kernels follow them
                with torch.cuda.stream(stream):
                    self._sums = metric_sums(self.task, self._copy, self._batches(), self.device, self.precision)
                stream.synchronize()
            else:
                self._sums = metric_sums(self.task, self._copy, self._batches(), self.device, self.precision)
        except BaseException as exc:  # re-raised on the training thread by result()
            self._error = exc

    def result(self) -> tuple[int, dict]:
        """Wait for the started evaluation; (its epoch, the metrics reduced over ranks)."""
        assert self._epoch is not None, "no evaluation was started"
        self.release()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        epoch, sums, error = self._epoch, self._sums, self._error
        self._epoch = self._sums = self._error = None
        if error is not None:
            raise RuntimeError(f"the evaluation of epoch {epoch} failed: {error}") from error
        filled, self._filling = self._filling, None
        if self.cached is not None or self.cache_bytes <= 0:
            return epoch, reduce_metric_sums(self.task, sums, self.device)
        # every rank keeps its share only if every rank's fits (a rank that read again alone would wait forever
        # for the others in the test split's next epoch)
        ok = torch.tensor(1.0 if filled is not None else 0.0, dtype=torch.float64, device=self.device)
        totals = reduce_sums({**sums, _CACHE_OK: ok}, self.device)
        if round(totals.pop(_CACHE_OK)) == self.world_size:
            self.cached = filled
        return epoch, summarize_metrics(self.task, totals) if totals else {}

    def close(self) -> None:
        """Wait for a running evaluation (its result is dropped)."""
        self.release()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._epoch = None
