"""The statistics a sweep's report rests on: Student's t distribution (from the regularised
incomplete beta function), 95% confidence intervals of a mean, paired comparisons with their
interval and two-sided p-value, and Holm's adjustment over a table's comparisons. Pure Python."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for k in (0, 1):  # the even then the odd term of step m
            if k == 0:
                num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
            else:
                num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return f


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The t with P(T <= t) = q (bisection on the CDF, to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got q={q}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Estimate:
    """A mean over n values: sd, and the 95% confidence interval (t with n - 1 df; none for n < 2)."""

    n: int
    mean: float
    sd: float
    lo: float | None
    hi: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None else (self.hi - self.lo) / 2.0

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": [self.lo, self.hi]}


def estimate(values: list[float], level: float = 0.95) -> Estimate:
    n = len(values)
    if n == 0:
        raise ValueError("estimate needs at least one value")
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    if n < 2:
        return Estimate(n, m, sd, None, None)
    h = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Estimate(n, m, sd, m - h, m + h)


@dataclass(frozen=True)
class Paired:
    """A paired comparison (x_i - y_i over shared seeds): the mean difference, its 95% interval, the
    paired t statistic and its two-sided p-value; `significant` when the interval excludes 0."""

    diff: Estimate
    t: float | None
    p: float | None
    seeds: tuple

    @property
    def significant(self) -> bool:
        return self.diff.lo is not None and (self.diff.lo > 0 or self.diff.hi < 0)

    def as_dict(self) -> dict:
        return {**self.diff.as_dict(), "t": self.t, "p": self.p, "seeds": list(self.seeds),
                "significant": self.significant}


def paired(x: dict, y: dict) -> Paired | None:
    """x and y map seeds to values; compares the seeds both have (None with fewer than two)."""
    seeds = tuple(sorted(set(x) & set(y)))
    if len(seeds) < 2:
        return None
    d = [x[s] - y[s] for s in seeds]
    est = estimate(d)
    if est.sd == 0.0:
        t = math.inf if est.mean else 0.0
        p = 0.0 if est.mean else 1.0
    else:
        t = est.mean / (est.sd / math.sqrt(est.n))
        p = 2.0 * (1.0 - t_cdf(abs(t), est.n - 1))
    return Paired(est, t, p, seeds)


def detectable(diff: Estimate, power: float = 0.8, level: float = 0.95) -> float | None:
    """The smallest true mean difference a paired t test on these seeds finds with probability `power`
    at `level` (two-sided), taking the observed spread as the true one: (t_{1-a/2} + t_power) sd / sqrt(n)."""
    if diff.n < 2 or diff.sd is None:
        return None
    df = diff.n - 1
    return (t_quantile(0.5 + level / 2.0, df) + t_quantile(power, df)) * diff.sd / math.sqrt(diff.n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error over a table's comparisons)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running, m = [0.0] * len(pvalues), 0.0, len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
