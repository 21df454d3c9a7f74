"""EpochReporter: which rows of a run reach Tune, and when (in-process, with a list for the queue)."""

import pytest

from repb_ray.train.messages import CHECKPOINT_STEP, EVAL_PENDING, EVAL_RESULT, EVAL_SKIPPED
from repb_ray.tune.reporter import CHECKPOINT_PATH, EpochReporter

pytestmark = pytest.mark.unit  # in-process, milliseconds


class _Rows(list):
    put = list.append


class _Checkpoint:
    def __init__(self, path):
        self.path = path


def test_tune_gets_each_evaluated_epoch_once_in_order_with_its_checkpoint():
    rows = _Rows()
    r = EpochReporter(rows)
    r.after_report(None, [{"epoch": 1, EVAL_SKIPPED: True}], _Checkpoint("e1"))        # eval_every: not evaluated
    r.after_report(None, [{"epoch": 2, EVAL_PENDING: True}], _Checkpoint("e2"))        # evaluated while 3 trains
    r.after_report(None, [{"epoch": 3, CHECKPOINT_STEP: 4,
                           EVAL_RESULT: {"epoch": 2, "test_accuracy": 0.5}}], _Checkpoint("s4"))
    r.after_report(None, [{"epoch": 3, "test_accuracy": 0.6}], _Checkpoint("e3"))
    assert rows == [{"epoch": 2, "test_accuracy": 0.5, CHECKPOINT_PATH: "e2"},
                    {"epoch": 3, "test_accuracy": 0.6, CHECKPOINT_PATH: "e3"}]
