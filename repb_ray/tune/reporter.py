"""Each trial's epochs to Tune, once their metrics are complete, from the trial's own thread. An epoch
evaluated asynchronously is reported by the worker loop without its test metrics (flagged pending) and
completed in the next report (an epoch's, or a checkpoint's within the next epoch, which Tune does not
see); Tune gets every epoch once, in order, with its own test metrics, so schedulers (ASHA) decide on
the right epoch. EpochReporter runs in the Train controller of a Tune trial and sends each epoch's row
to a queue; `train_and_report` runs in the trial's thread and is the only caller of tune.report: the
run trains in a thread of its own. (Ray's TuneReportCallback hands its rows to Tune's main thread
instead, which then reports them itself; when the trial function returns while that thread holds the
last row, both threads wait on each other's report and the trial hangs RUNNING without its last epoch.)"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from repb_ray.train.messages import CHECKPOINT_KEEP, CHECKPOINT_STEP, EVAL_PENDING, EVAL_RESULT, EVAL_SKIPPED

CHECKPOINT_PATH = "checkpoint_path"   # a row's checkpoint, as Ray's own Tune integration names it
POLL_S = 0.5


class EpochReporter(UserCallback):
    """Train controller: each epoch's row (its checkpoint's path added) on `rows`, once complete."""

    def __init__(self, rows: Queue):
        self.rows = rows
        self._held: dict = {}  # epoch -> the checkpoint reported with it, while its metrics are pending

    def after_report(self, run_context, metrics, checkpoint):
        row = dict(metrics[0])
        row.pop(CHECKPOINT_KEEP, None)
        done = row.pop(EVAL_RESULT, None)
        if done is not None:
            self._send(done, self._held.pop(done.get("epoch"), None))
        if CHECKPOINT_STEP in row or row.get(EVAL_SKIPPED):  # a checkpoint within an epoch, or an epoch not
            return                                             # evaluated (eval_every): no metric for Tune
        if row.get(EVAL_PENDING):
            self._held[row.get("epoch")] = checkpoint
            return
        self._send(row, checkpoint)

    def _send(self, row: dict, checkpoint) -> None:
        row = dict(row)
        if checkpoint is not None:
            row[CHECKPOINT_PATH] = checkpoint.path
        self.rows.put(row)


def train_and_report(train: Callable[[UserCallback], None]) -> None:
    """Trial thread: `train(reporter)` (the run, with an EpochReporter among its callbacks) in a thread of
    its own; this thread passes every row to tune.report, in order, until the run has ended and every
    row is reported; then raises what the run raised."""
    rows = Queue(actor_options={"num_cpus": 0})
    ended: dict = {}

    def run():
        try:
            train(EpochReporter(rows))
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial thread
            ended["error"] = e

    worker = threading.Thread(target=run, name="repb-trial-run", daemon=True)
    worker.start()
    while True:
        alive = worker.is_alive()   # read before the queue: a row put before the run ended is still seen
        try:
            tune.report(rows.get(timeout=POLL_S))
            continue
        except Empty:
            if not alive:
                break
    worker.join()
    if "error" in ended:
        raise ended["error"]
