"""When the built-in loop checkpoints within an epoch: every N optimizer steps, and at once when Ray says
a node of the run is about to be preempted (asked every M steps: the question is a barrier across the
ranks, so every rank asks at the same steps). Runs in every Train worker."""

from __future__ import annotations

from collections.abc import Callable


def ray_preemption_info():
    import ray.train
    return ray.train.get_preemption_info()


class CheckpointCadence:
    """`due(steps_done, last)` after each optimizer step: "every", "preemption" or None. A preemption
    notice is acted on once per worker group (the group that restarts after it asks again)."""

    def __init__(self, every_steps: int, check_steps: int, preemption_info: Callable = ray_preemption_info):
        self.every, self.check, self._info = every_steps, check_steps, preemption_info
        self.notice = None   # the preemption notice acted on

    def due(self, steps_done: int, last: bool) -> str | None:
        if last or steps_done <= 0:  # the epoch's own checkpoint follows
            return None
        if self.check and steps_done % self.check == 0 and self.notice is None:
            info = self._info()
            if info is not None:
                self.notice = info
                return "preemption"
        if self.every and steps_done % self.every == 0:
            return "every"
        return None
