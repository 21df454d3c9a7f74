"""EpochReporter: passes each trial's epochs to Tune once their metrics are complete. An epoch evaluated
asynchronously is reported by the worker loop without its test metrics (flagged pending) and completed in
the next report (an epoch's, or a checkpoint's within the next epoch, which Tune does not see); Tune gets
every epoch once, in order, with its own test metrics, so schedulers (ASHA) decide on the right epoch.
Runs in the Train controller of a Tune trial."""

from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback

from repb_ray.train.messages import CHECKPOINT_KEEP, CHECKPOINT_STEP, EVAL_PENDING, EVAL_RESULT


class EpochReporter(TuneReportCallback):
    def __init__(self):
        super().__init__()
        self._held: dict = {}  # epoch -> the checkpoint reported with it, while its metrics are pending

    def after_report(self, run_context, metrics, checkpoint):
        row = dict(metrics[0])
        row.pop(CHECKPOINT_KEEP, None)
        done = row.pop(EVAL_RESULT, None)
        if done is not None:
            super().after_report(run_context, [done], self._held.pop(done.get("epoch"), None))
        if CHECKPOINT_STEP in row:  # a checkpoint within an epoch: no epoch for Tune
            return
        if row.get(EVAL_PENDING):
            self._held[row.get("epoch")] = checkpoint
            return
        super().after_report(run_context, [row], checkpoint)
