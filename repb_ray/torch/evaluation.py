"""Evaluator: the test-set evaluation of an epoch, either at once (sync) or on a snapshot of the weights in
a thread while the next epoch trains (async); the per-rank sums are reduced across ranks on the calling
thread (collectives never run in the thread). Runs in every Train worker, and in the plain loop."""

from __future__ import annotations

import copy
import threading

import torch

from repb_ray.config import EVAL_MODES
from repb_ray.torch.step import metric_sums, reduce_metric_sums


class Evaluator:
    """`start(epoch, model)` begins the evaluation of the weights `model` holds now; `result()` returns
    (epoch, metrics) once they are known and reduced over ranks (every rank calls it, in the same order).
    Async: the weights are copied into a second model (on the device, ordered before the next update)
    and evaluated in one background thread with one CPU thread of torch; the training thread goes on."""

    def __init__(self, task, batches_fn, device, *, precision: str = "fp32", mode: str = "async"):
        if mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got eval_mode={mode!r}")
        self.task, self.batches_fn, self.device, self.precision, self.mode = task, batches_fn, torch.device(device), precision, mode
        self._copy = None
        self._thread: threading.Thread | None = None
        self._epoch: int | None = None
        self._sums: dict | None = None
        self._error: BaseException | None = None

    @property
    def pending(self) -> int | None:
        """The epoch whose evaluation was started and not yet collected (None when none is)."""
        return self._epoch

    def start(self, epoch: int, model) -> None:
        assert self._epoch is None, f"the evaluation of epoch {self._epoch} was not collected"
        self._epoch, self._sums, self._error = epoch, None, None
        if self.mode == "sync":
            self._sums = metric_sums(self.task, model, self.batches_fn(), self.device, self.precision)
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
        self._thread = threading.Thread(target=self._run, args=(stream,), name=f"repb-eval-{epoch}", daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        try:
            torch.set_num_threads(1)  # this thread only: the training thread keeps its own
            if stream is not None:
                with torch.cuda.stream(stream):
                    self._sums = metric_sums(self.task, self._copy, self.batches_fn(), self.device, self.precision)
                stream.synchronize()
            else:
                self._sums = metric_sums(self.task, self._copy, self.batches_fn(), self.device, self.precision)
        except BaseException as exc:  # re-raised on the training thread by result()
            self._error = exc

    def result(self) -> tuple[int, dict]:
        """Wait for the started evaluation; (its epoch, the metrics reduced over ranks)."""
        assert self._epoch is not None, "no evaluation was started"
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        epoch, sums, error = self._epoch, self._sums, self._error
        self._epoch = self._sums = self._error = None
        if error is not None:
            raise RuntimeError(f"the evaluation of epoch {epoch} failed: {error}") from error
        return epoch, reduce_metric_sums(self.task, sums, self.device)

    def close(self) -> None:
        """Wait for a running evaluation (its result is dropped)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._epoch = None
