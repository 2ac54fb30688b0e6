"""95% intervals over seeds, used by `mmpo compare`, `mmpo sweep --seeds` and `mmpo demo`.

The method is the Student t-interval over seeds. For a metric measured on runs with seeds ``1..n``:

* one configuration:   ``mean +- t * sd / sqrt(n)``, ``sd`` the sample standard deviation (``ddof = 1``);
* a paired difference: ``d_s = metric(first, seed s) - metric(second, seed s)``, then the same on ``d_1..d_n``.

``t`` is the two-sided 95% quantile of Student's t with ``n - 1`` degrees of freedom (4.303 for 3 seeds). Pairing
by seed removes what the two runs of a seed share (the same training sample, data order, head initialisation and
held-out pairs), so the interval is about the loss alone. A seed is the unit: the interval covers seed-to-seed
variation (initialisation, data sample and order, and the held-out sample when that is drawn per seed), and
says nothing about other models, data sets or scales. With one seed there is no interval (``None``).

A difference is *distinguishable from zero* when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHOD = "95% Student t-interval over seeds (paired by seed for differences): mean +- t(0.975, n-1) * sd / sqrt(n)"

# Two-sided 95% quantiles t(0.975, df) of Student's t, df = 1..30 (standard table values).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """``t(0.975, df)``: the table for ``df <= 30``, beyond it the Cornish-Fisher expansion
    ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)`` (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1 (got {df})")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "low", "high", "n"}``: ``mean +- t(0.975, n-1) * sd / sqrt(n)``; low/high None when n < 2."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def paired_difference(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int | None]:
    """``{"diff", "low", "high", "n"}``: :func:`mean_interval` of the per-seed differences ``first_s - second_s``."""
    a = np.asarray(first, dtype=np.float64).reshape(-1)
    b = np.asarray(second, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length ({a.size} vs {b.size})")
    out = mean_interval(a - b)
    return {"diff": out["mean"], "low": out["low"], "high": out["high"], "n": out["n"]}


def method_for(n_seeds: int) -> str:
    """How a report with ``n_seeds`` seeds states its intervals: :data:`METHOD`, or "no interval" for one seed."""
    return METHOD if n_seeds >= 2 else "no interval: one seed gives a mean and nothing to measure its spread with"


def few_seeds_warning(n_seeds: int) -> str | None:
    """A warning for fewer than 3 seeds (None from 3 on). With 2 seeds ``t(0.975, 1) = 12.706``: the interval
    reaches 9 times the seeds' spread on either side of the mean, too wide to tell anything apart; it is shown
    as computed, not clipped to the metric's range."""
    if n_seeds >= 3:
        return None
    if n_seeds == 1:
        return "warning: one seed gives no interval; use 3 or more seeds (--seeds 0,1,2) to compare losses"
    return (f"warning: with 2 seeds each 95% interval is mean +- {_T975[0]:g} * sd / sqrt(2), about 9 times the seeds' "
            "spread on either side, and may leave the metric's range (shown as computed): use 3 or more seeds")


def distinguishable(low: float | None, high: float | None) -> bool:
    """True when the interval [low, high] excludes zero (False when there is no interval)."""
    if low is None or high is None:
        return False
    return low > 0 or high < 0


def format_interval(mean: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """``"0.612 +- 0.021"`` (half-width of a symmetric interval), or the bare mean when there is none."""
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {(high - low) / 2:.{digits}f}"
