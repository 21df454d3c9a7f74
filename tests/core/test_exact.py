"""Exact window means: digit sums independent of order and partition, the float64 tolerance, and the
fallback that decides near-ties with the exact mean."""

from fractions import Fraction

import numpy as np
import pytest

from repb_ray.core import make_policy
from repb_ray.core.exact import digit_sums, group_means, mean_tolerance, scale_exponent

pytestmark = pytest.mark.unit  # in-process, seconds


def _wide_scores(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp2(rng.integers(-30, 8, n))).astype(np.float32)


def test_digit_sums_do_not_depend_on_order_or_partition():
    s = _wide_scores(5000, 0)
    g = np.random.default_rng(1).integers(0, 7, s.size)
    t = scale_exponent(float(np.abs(s).max()))
    whole = digit_sums(s, g, 7, t)
    perm = np.random.default_rng(2).permutation(s.size)
    parts = sum(digit_sums(s[perm][a:b], g[perm][a:b], 7, t) for a, b in [(0, 1), (1, 1200), (1200, 5000)])
    np.testing.assert_array_equal(whole, parts)
    exact = [sum(Fraction(float(x)) for x in s[g == k]) for k in range(7)]
    got = group_means(whole, np.bincount(g, minlength=7), t) * np.bincount(g, minlength=7)
    for k in range(7):  # exact up to the final roundings
        assert abs(Fraction(float(got[k])) - exact[k]) <= abs(exact[k]) * Fraction(1, 2**50)


@pytest.mark.parametrize("value", [0.1, 3.0, 1e-7, 2.0 ** -100, 123456.7])
def test_equal_scores_have_exactly_their_value_as_mean(value):
    s = np.full(1000, value, np.float32)
    t = scale_exponent(float(s[0]))
    assert group_means(digit_sums(s, np.zeros(1000, np.int64), 1, t), np.array([1000]), t)[0] == float(s[0])


def test_float64_means_are_within_the_tolerance_of_the_exact_mean():
    for seed in range(20):
        s = _wide_scores(777, seed)
        exact = sum(Fraction(float(x)) for x in s) / s.size
        t = scale_exponent(float(np.abs(s).max()))
        tol = mean_tolerance(s.size, float(np.abs(s).max()), t)
        for order in (np.arange(s.size), np.random.default_rng(seed).permutation(s.size)):
            approx = float(np.add.reduce(s[order], dtype=np.float64)) / s.size
            assert abs(Fraction(approx) - exact) <= Fraction(tol)


def test_near_ties_are_decided_with_the_exact_mean():
    """Scores 2**30, 2**-30, -2**30, 0 in one window: a float64 sum in arrival order cancels to 0,
    the exact mean is 2**-32, so 0 is below it. rho=1 prunes every sample below its window mean."""
    p = make_policy("repb", num_samples=4, seed=0, rho=1.0, window=1)
    p.observe(0, np.arange(4, dtype=np.int64), np.array([2.0**30, 2.0**-30, -(2.0**30), 0.0], np.float32))
    assert p.finish_epoch().ids.tolist() == [0, 1]

    q = make_policy("repb", num_samples=4, seed=0, rho=1.0, window=1)
    q.observe(0, np.arange(4, dtype=np.int64), np.array([0.1, 0.1, 0.1, 0.1], np.float32))
    assert q.finish_epoch().ids.tolist() == [0, 1, 2, 3]  # all at the mean: kept


def test_infobatch_global_mean_is_exact_too():
    p = make_policy("infobatch", num_samples=4, seed=0, prune_ratio=0.99, num_epochs=10)
    p.observe(0, np.arange(4, dtype=np.int64), np.array([2.0**30, 2.0**-30, -(2.0**30), 0.0], np.float32))
    p.finish_epoch()
    assert p.shards[0].rescaled.tolist() == [False, False, True, True] or len(p.plan) < 4
    below = p.shard_array("scores") < float(2.0**-32)
    assert below.tolist() == [False, False, True, True]
