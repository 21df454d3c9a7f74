"""FillingShuffle: every row once, the first batch after the first block, a buffer that grows to its size."""

import numpy as np
import pytest

from repb_ray.data.mixing import FillingShuffle

pytestmark = pytest.mark.unit


def _blocks(sizes, start=0):
    out, lo = [], start
    for n in sizes:
        out.append({"id": np.arange(lo, lo + n, dtype=np.int64), "x": np.arange(lo, lo + n, dtype=np.float32) * 2})
        lo += n
    return out


def test_every_row_once_in_full_batches_but_the_last():
    blocks = _blocks([2048, 700, 0, 2048, 1500, 33])
    batches = list(FillingShuffle(128, 4096, seed=1).batches(blocks))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(6329))
    assert [len(b["id"]) for b in batches[:-1]] == [128] * (len(batches) - 1)
    assert len(batches) == -(-6329 // 128)
    for b in batches:  # the columns of a row travel together
        assert np.array_equal(b["x"], b["id"].astype(np.float32) * 2)


def test_the_first_batch_needs_only_the_first_block():
    mix = FillingShuffle(128, 4096, seed=0)
    first = list(mix.add(_blocks([2048])[0]))
    assert len(first) == 8  # half the block is served, half kept for mixing
    assert not np.array_equal(first[0]["id"], np.arange(128))  # drawn at random, not the block's head


def test_the_buffer_fills_to_its_size_and_stays_there():
    mix, seen, served = FillingShuffle(64, 1024, seed=3), 0, 0
    for block in _blocks([256] * 40):
        seen += 256
        served += sum(len(b["id"]) for b in mix.add(block))
        kept = seen - served
        assert kept >= min(1024, seen // 2)
        assert kept < min(1024, seen // 2) + 64  # nothing held back beyond that
    assert seen - served >= 1024


def test_batches_mix_blocks_once_the_buffer_is_full():
    blocks = _blocks([512] * 32)
    batches = list(FillingShuffle(128, 4096, seed=5).batches(blocks))
    later = batches[len(batches) // 2:]
    spans = [len(np.unique(b["id"] // 512)) for b in later]
    assert np.mean(spans) >= 5  # a batch draws from many blocks, not the latest one
    small = list(FillingShuffle(128, 128, seed=5).batches(blocks))[len(batches) // 2:]
    assert np.mean([len(np.unique(b["id"] // 512)) for b in small]) < np.mean(spans)


def test_a_pure_function_of_the_blocks_and_the_seed():
    def ids(seed):
        return np.concatenate([b["id"] for b in FillingShuffle(100, 900, seed).batches(_blocks([300] * 10))])
    assert np.array_equal(ids(7), ids(7))
    assert not np.array_equal(ids(7), ids(8))


def test_no_buffer_keeps_the_order_and_spans_blocks():
    batches = list(FillingShuffle(128, 0, seed=0).batches(_blocks([100, 100, 100])))
    assert [len(b["id"]) for b in batches] == [128, 128, 44]
    assert np.array_equal(np.concatenate([b["id"] for b in batches]), np.arange(300))


def test_bad_sizes_and_mismatched_blocks_raise():
    with pytest.raises(ValueError, match="batch_size must be at least 1, got batch_size=0"):
        FillingShuffle(0, 10, 0)
    with pytest.raises(ValueError, match="buffer_rows must be at least 0, got buffer_rows=-1"):
        FillingShuffle(8, -1, 0)
    mix = FillingShuffle(8, 64, 0)
    list(mix.add({"id": np.arange(4)}))
    with pytest.raises(ValueError, match="columns"):
        list(mix.add({"id": np.arange(4), "x": np.arange(4)}))


def test_compaction_bounds_the_memory_held_and_changes_no_batch():
    blocks = _blocks([512] * 80)
    bound = 2 * (1024 + 64) + 512
    held = {}
    out = {}
    for compact in (True, False):
        mix, most, batches = FillingShuffle(64, 1024, seed=9, compact=compact), 0, []
        for block in blocks:
            batches += list(mix.add(block))
            most = max(most, mix.held_rows)
        batches += list(mix.finish())
        held[compact], out[compact] = most, batches
    assert held[True] <= bound < held[False]  # blocks whose last rows linger are let go once copied
    assert len(out[True]) == len(out[False])
    for a, b in zip(out[True], out[False]):
        assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["x"], b["x"])
