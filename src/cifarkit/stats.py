"""Small statistics for benchmark reports: mean, std, and a one-sided t-test without SciPy.

The GPU machines we benchmark on may lack SciPy, so the Student t tail is computed here from the
regularized incomplete beta function (continued fraction, as in Numerical Recipes); the tests
compare it with SciPy where SciPy is installed.
"""

from __future__ import annotations

import math
import statistics


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def one_sided_p_value(samples: list[float], target: float) -> float | None:
    """p-value of H0 'mean <= target' against 'mean > target'; small p supports mean > target.

    None when it is undefined (fewer than two samples, or no spread).
    """
    n = len(samples)
    if n < 2:
        return None
    sd = statistics.stdev(samples)
    if sd == 0:
        return 0.0 if statistics.fmean(samples) > target else 1.0
    t = (statistics.fmean(samples) - target) / (sd / math.sqrt(n))
    return student_t_sf(t, n - 1)


def describe(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "mean": statistics.fmean(samples) if samples else None,
        "std": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "median": statistics.median(samples) if samples else None,
        "min": min(samples) if samples else None,
        "max": max(samples) if samples else None,
    }
