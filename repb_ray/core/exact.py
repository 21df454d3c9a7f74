"""Exact, order-free sums of float32 scores per window, so window means do not depend on the order,
chunking or sharding of the observations; runs anywhere.

Every score s is split on a grid set by T (all |s| < 2**T) into three integer digits of 22 bits:
s = 2**T * (d0 * 2**-22 + d1 * 2**-44 + d2 * 2**-66) + r. The digits are summed per window in
float64, where sums of integers below 2**53 are exact whatever the order, so partial sums from any
split of the observations add up to the same three numbers. The remainder r is zero for every score
within a factor 2**42 of the largest |score| of the epoch (smaller ones are truncated toward zero on
that grid). A window's mean is then (((D0 * 2**-22 + D1 * 2**-44) + D2 * 2**-66) * 2**T) / count,
always evaluated in that order; equal scores give exactly their value as the mean.

Deciding s >= mean needs the exact mean only for scores very close to it: a plain float64 sum in any
order is within `mean_tolerance` of it, so callers decide with that sum and compute the digit sums
only for the windows where some score lies within the tolerance (ties, near-ties). The decisions
are those of the exact rule either way.
"""

from __future__ import annotations

import math

import numpy as np

DIGIT_BITS = 22
NUM_DIGITS = 3
_PIECE = 1 << 20
_U = 2.0 ** -53  # unit roundoff of float64


def scale_exponent(max_abs: float) -> int:
    """The T of the grid: the smallest integer with max_abs < 2**T (0 for max_abs == 0)."""
    if max_abs == 0.0:
        return 0
    return math.frexp(max_abs)[1]


def digit_sums(scores: np.ndarray, groups: np.ndarray | None, num_groups: int, exponent: int) -> np.ndarray:
    """float64 [NUM_DIGITS, num_groups]: per group, the exact sums of the score digits (integers).
    groups=None puts every score in group 0."""
    out = np.zeros((NUM_DIGITS, num_groups), np.float64)
    scale = math.ldexp(1.0, DIGIT_BITS - exponent)
    step = math.ldexp(1.0, DIGIT_BITS)
    for start in range(0, scores.shape[0], _PIECE):  # bounded temporaries
        x = scores[start:start + _PIECE].astype(np.float64)
        x *= scale                    # |x| < 2**22, exact (power-of-two scaling)
        g = None if groups is None else groups[start:start + _PIECE]
        for j in range(NUM_DIGITS):
            d = np.trunc(x)
            x -= d                    # exact: the fraction of x
            if g is None:
                out[j, 0] += d.sum()  # integers below 2**53 in total: exact in any order
            else:
                out[j] += np.bincount(g, weights=d, minlength=num_groups)
            if j + 1 < NUM_DIGITS:
                x *= step
    return out


def group_means(sums: np.ndarray, counts: np.ndarray, exponent: int) -> np.ndarray:
    """Means from digit sums (added over any partition of the observations) and counts; NaN where a
    group is empty."""
    total = sums[0] * math.ldexp(1.0, -DIGIT_BITS) + sums[1] * math.ldexp(1.0, -2 * DIGIT_BITS)
    total += sums[2] * math.ldexp(1.0, -3 * DIGIT_BITS)
    total *= math.ldexp(1.0, exponent)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / counts


def mean_tolerance(max_count: int, max_abs: float, exponent: int) -> float:
    """A bound on |fl(S~ / c) - canonical mean| for a window of c <= max_count scores of magnitude at
    most max_abs, S~ being their float64 sum in any order and grouping: (c - 1) u max_abs for the sum,
    u for each rounding of the division and of the canonical evaluation, and the digit truncation."""
    return (2.0 * max_count + 8.0) * _U * max_abs + math.ldexp(1.0, exponent - NUM_DIGITS * DIGIT_BITS + 1) + 1e-300
