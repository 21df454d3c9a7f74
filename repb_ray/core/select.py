"""Exact k-selection by key with ties broken by id, the same on one array or across id-range shards;
runs anywhere. Keys are float64; `order_keys` maps them to uint64 preserving order."""

from __future__ import annotations

import numpy as np

RADIX_BITS = 16
_SIGN = np.uint64(1 << 63)


def order_keys(values: np.ndarray, largest: bool = False) -> np.ndarray:
    """uint64 keys whose ascending order is the ascending order of the float64 values (descending
    with largest=True). -0.0 sorts as 0.0; NaN is not allowed (callers reject it before)."""
    v = np.asarray(values, np.float64) + 0.0  # -0.0 -> 0.0
    bits = v.view(np.uint64)
    neg = (bits & _SIGN) != 0
    keys = np.where(neg, ~bits, bits | _SIGN)
    return ~keys if largest else keys


def smallest_mask(keys: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k smallest keys (uint64); among equal keys the lower positions (ids) first."""
    n = keys.shape[0]
    mask = np.zeros(n, bool)
    if k <= 0:
        return mask
    if k >= n:
        mask[:] = True
        return mask
    t = np.partition(keys, k - 1)[k - 1]
    np.less(keys, t, out=mask)
    need = k - int(np.count_nonzero(mask))
    if need:
        mask[np.flatnonzero(keys == t)[:need]] = True
    return mask


class RadixSelect:
    """The shard side of a distributed k-smallest selection: histograms of the next RADIX_BITS bits
    of the keys that share a prefix, then the final cut. Keys of ids outside the candidates are
    passed as None (not candidates)."""

    def __init__(self, keys: np.ndarray, candidates: np.ndarray | None = None):
        self.keys = keys if candidates is None else keys[candidates]
        self.pos = None if candidates is None else np.flatnonzero(candidates)
        self.n = keys.shape[0]

    def histogram(self, prefix: int, bits: int) -> np.ndarray:
        k = self.keys
        if bits:
            k = k[(k >> np.uint64(64 - bits)) == np.uint64(prefix)]
        digit = (k >> np.uint64(64 - bits - RADIX_BITS)) & np.uint64((1 << RADIX_BITS) - 1)
        return np.bincount(digit.astype(np.int64), minlength=1 << RADIX_BITS)

    def counts(self, threshold: int) -> tuple[int, int]:
        t = np.uint64(threshold)
        return int(np.count_nonzero(self.keys < t)), int(np.count_nonzero(self.keys == t))

    def mask(self, threshold: int, ties: int) -> np.ndarray:
        t = np.uint64(threshold)
        chosen = self.keys < t
        if ties:
            chosen[np.flatnonzero(self.keys == t)[:ties]] = True
        if self.pos is None:
            return chosen
        out = np.zeros(self.n, bool)
        out[self.pos[chosen]] = True
        return out


def radix_threshold(k: int):
    """Generator driving shards' RadixSelect.histogram: yields (prefix, bits) requests, receives the
    summed histogram, returns (threshold key, k minus the count strictly below it)."""
    prefix, bits, rank = 0, 0, k  # rank: how many of the keys under `prefix` are still to take
    while bits < 64:
        hist = yield prefix, bits
        cum = np.cumsum(hist)
        d = int(np.searchsorted(cum, rank))  # first digit whose cumulative count reaches rank
        rank -= int(cum[d - 1]) if d else 0
        prefix = (prefix << RADIX_BITS) | d
        bits += RADIX_BITS
    return prefix, rank
