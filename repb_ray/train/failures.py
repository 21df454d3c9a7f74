"""RetryGuard: which failures of a run's worker group are worth Ray Train's retries. A user error (bad input:
a task breaking its contract, data, config) would fail the same way again, and so would an error that
ended the last attempt at the same epoch and step; either ends the run at once, with the workers' errors.
Runs in the Train controller (a Ray Train UserCallback)."""

from __future__ import annotations

import ray
import ray.train

from repb_ray.errors import user_error


class StopRetrying(RuntimeError):
    """Raised in the controller to end the run without more retries; `worker_failures` (rank -> error) are
    the workers' errors, as Ray Train's own WorkerGroupError holds them; `repeated`: the one line of a
    failure that repeated (None for a user error)."""

    def __init__(self, message: str, worker_failures: dict, repeated: str | None = None):
        super().__init__(message)
        self.worker_failures, self.repeated = worker_failures, repeated

    def __reduce__(self):
        return (type(self), (str(self), self.worker_failures, self.repeated))


class RetryGuard(ray.train.UserCallback):
    """Raising here routes the run through Ray Train's failure policy as a controller error, which is not
    retried. `coordinator`: the run's coordinator, where each failing rank recorded (epoch, step, error)."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        if any(user_error(e) is not None for e in worker_exceptions.values()):
            raise StopRetrying("a user error in a worker: not retried", dict(worker_exceptions))
        try:
            repeated = ray.get(self.coordinator.repeated_failure.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - no answer (the coordinator may be what failed): Ray's retries decide
            return
        if repeated is not None:
            raise StopRetrying(repeated, dict(worker_exceptions), repeated)
