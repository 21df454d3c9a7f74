"""Ahead: an iterator whose first item is fetched in a thread from the moment it is made, so an epoch's
data starts (Ray Data's execution, the first reads) while the epoch boundary's other work runs. Runs in
every Train worker."""

from __future__ import annotations

import threading
import time

_END = object()


class Ahead:
    """Iterates `iterable`; its first `next` runs in a thread started at construction. `waited_s` is how
    long the consumer then waited for that first item."""

    def __init__(self, iterable):
        self._it = iter(iterable)
        self._first = _END
        self._error: BaseException | None = None
        self.waited_s = 0.0
        self._thread = threading.Thread(target=self._fetch, name="repb-first-batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self._it, _END)
        except BaseException as exc:  # re-raised in the consumer
            self._error = exc

    def __iter__(self):
        t = time.perf_counter()
        self._thread.join()
        self.waited_s = time.perf_counter() - t
        if self._error is not None:
            raise self._error
        if self._first is _END:
            return
        yield self._first
        self._first = _END
        yield from self._it
