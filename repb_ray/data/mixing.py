"""FillingShuffle: a rank's local shuffle across the blocks it receives, with a buffer that fills while
it serves, so an epoch's first batch waits for its first block only. Pure numpy; runs in every Train
worker."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _rows(block: dict) -> int:
    return len(next(iter(block.values())))


class FillingShuffle:
    """Batches of `batch_size` rows from the blocks passed to `add`, in order. With `buffer_rows` > 0,
    each batch is drawn without replacement from the rows buffered so far; after a block is added,
    batches are served while the buffer keeps at least `min(buffer_rows, seen // 2)` rows besides them
    (`seen`: the rows added so far). The buffer so grows to `buffer_rows` as the epoch goes on instead of
    holding back the first batch. With `buffer_rows` 0 the rows keep their order (batches may span
    blocks). `finish()` serves the rest, the last batch possibly short. A pure function of the blocks
    and `seed`: the same blocks give the same batches whenever they arrive. `compact`: when the rows
    already served outnumber the unserved ones among the blocks held, the unserved ones are copied into
    one block, so memory stays within about twice the buffer and a block (the batches are the same
    either way)."""

    def __init__(self, batch_size: int, buffer_rows: int, seed: int | None, *, compact: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got batch_size={batch_size}")
        if buffer_rows < 0:
            raise ValueError(f"buffer_rows must be at least 0, got buffer_rows={buffer_rows}")
        self.batch_size, self.buffer_rows, self.compact = batch_size, buffer_rows, compact
        self._rng = np.random.default_rng(seed)
        # the blocks with rows not yet served, each with its first row's number and its rows left; rows are
        # numbered across blocks in the order they arrived, and `_order` lists the unserved ones in the
        # order they will be served (a row is copied into its batch, and by a compaction)
        self._blocks: list[dict] = []
        self._starts: list[int] = []
        self._left: list[int] = []
        self._order = np.empty(0, np.int64)
        self._next = 0   # the next block's first row number
        self._seen = 0

    @property
    def held_rows(self) -> int:
        """The rows of the blocks held (served or not): what the buffer keeps in memory."""
        return sum(_rows(b) for b in self._blocks)

    def add(self, block: dict) -> Iterator[dict]:
        """Buffer `block` (a dict of equal-length arrays); yields the batches now due."""
        n = _rows(block)
        if n == 0:
            return
        if self._blocks and block.keys() != self._blocks[0].keys():
            raise ValueError(f"a block's columns {sorted(block)} differ from the buffer's {sorted(self._blocks[0])}")
        if self.compact and self.held_rows > 2 * self._order.shape[0]:
            self._compact()
        self._blocks.append(block)
        self._starts.append(self._next)
        self._left.append(n)
        order = np.concatenate([self._order, np.arange(self._next, self._next + n)])
        self._next += n
        self._seen += n
        if self.buffer_rows:
            order = self._rng.permutation(order)
        keep = min(self.buffer_rows, self._seen // 2)
        self._order = order
        while self._order.shape[0] - self.batch_size >= keep:
            yield self._serve(self.batch_size)

    def finish(self) -> Iterator[dict]:
        """The rows still buffered, in batches (the last one possibly short)."""
        while self._order.shape[0]:
            yield self._serve(self.batch_size)

    def batches(self, blocks) -> Iterator[dict]:
        """Every batch of `blocks` (an iterable of blocks)."""
        for block in blocks:
            yield from self.add(block)
        yield from self.finish()

    def _serve(self, size: int) -> dict:
        """The next `size` rows of `_order` (fewer at the end) as one batch, its rows in the order they
        arrived (a batch is a set: which rows, not their order within it, is what the shuffle decides)."""
        rows, self._order = np.sort(self._order[:size]), self._order[size:]
        return self._take(rows)

    def _compact(self) -> None:
        """The unserved rows copied into one block, numbered in the order they arrived (so every later batch
        lists its rows as it would have without the copy)."""
        live = np.sort(self._order)
        merged = self._take(live)
        self._order = np.searchsorted(live, self._order)
        self._blocks, self._starts, self._left = [merged], [0], [live.shape[0]]
        self._next = live.shape[0]

    def _take(self, rows: np.ndarray) -> dict:
        """Rows (numbers, ascending) out of the blocks held, in one dict; blocks left with none are let go."""
        block_of = np.searchsorted(self._starts, rows, side="right") - 1
        parts, kept = [], []
        for j, (block, start) in enumerate(zip(self._blocks, self._starts)):
            mine = rows[block_of == j] - start
            if mine.shape[0]:
                parts.append((block, mine))
                self._left[j] -= mine.shape[0]
            if self._left[j]:
                kept.append(j)
        self._blocks, self._starts, self._left = ([xs[j] for j in kept] for xs in (self._blocks, self._starts, self._left))
        if len(parts) == 1:
            block, mine = parts[0]
            return {k: v[mine] for k, v in block.items()}
        return {k: np.concatenate([block[k][mine] for block, mine in parts]) for k in parts[0][0]}
