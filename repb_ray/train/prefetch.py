"""Ahead: an iterator whose first item is fetched in a thread from the moment it is made; EpochsAhead: each
epoch's batches so fetched, the next epoch's from the moment this one's data is all in hand. So an epoch's
data starts (Ray Data's execution, the reads) while the last batches and the boundary's work run. Runs in
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


class EpochsAhead:
    """The epochs' batches, each an Ahead: `start(e)` fetches epoch e's from now, and epoch e's fetch starts
    e + 1's once e's data has sent its last block (up to epoch `last`). `source(epoch, skip, then)` gives an
    epoch's batches (after the first `skip`) and calls `then()` once its data is all in hand."""

    def __init__(self, source, last: int):
        self._source, self._last = source, last
        self._next: tuple | None = None   # (epoch, its Ahead)

    def start(self, epoch: int) -> None:
        """Fetch `epoch`'s batches from now."""
        self._next = (epoch, self._fetch(epoch, 0))

    def batches(self, epoch: int, skip: int = 0) -> Ahead:
        """`epoch`'s batches: those fetched ahead, or from now (after the first `skip`)."""
        ahead, self._next = self._next, None
        if ahead is None:
            return self._fetch(epoch, skip)
        assert ahead[0] == epoch and skip == 0, f"fetched ahead: epoch {ahead[0]} from its start; asked: {epoch}, {skip}"
        return ahead[1]

    def _fetch(self, epoch: int, skip: int) -> Ahead:
        then = (lambda: self.start(epoch + 1)) if epoch < self._last else None
        return Ahead(self._source(epoch, skip, then))
