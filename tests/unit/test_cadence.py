"""CheckpointCadence: when the built-in loop checkpoints within an epoch."""

import pytest

from repb_ray.train.cadence import CheckpointCadence

pytestmark = pytest.mark.unit


def test_every_n_steps_but_not_at_the_epochs_end():
    c = CheckpointCadence(every_steps=3, check_steps=0, preemption_info=lambda: 1 / 0)
    assert [c.due(s, last=(s == 9)) for s in range(1, 10)] == [None, None, "every", None, None, "every", None, None,
                                                                None]


def test_a_preemption_notice_checkpoints_at_once_and_once():
    asked, notice = [], {"at": None}

    def info():
        asked.append(1)
        return notice["at"]
    c = CheckpointCadence(every_steps=0, check_steps=2, preemption_info=info)
    assert [c.due(s, last=False) for s in (1, 2, 3, 4)] == [None] * 4
    assert len(asked) == 2  # at steps 2 and 4 only: every rank asks at the same steps (it is a barrier)
    notice["at"] = "node-1"
    assert c.due(6, last=False) == "preemption" and c.notice == "node-1"
    assert c.due(8, last=False) is None and len(asked) == 3  # acted on: not asked again in this worker group
