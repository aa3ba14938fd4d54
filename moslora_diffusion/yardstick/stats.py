"""Small statistics helpers for benchmark reports: mean and a t-based 95% confidence interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; beyond that the normal 1.96.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def t_critical_975(df: int) -> float:
    """The t quantile for a two-sided 95% interval with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("need at least 2 samples for a confidence interval")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Return (mean, half-width of the 95% confidence interval); half-width is nan for one value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values")
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan
    half = t_critical_975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, half


def format_mean_ci(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± half' (as percentages by default)."""
    mean, half = mean_ci95(values)
    shown = round(mean * scale, digits) + 0.0  # + 0.0: never "-0.0"
    if math.isnan(half):
        return f"{shown:.{digits}f}"
    return f"{shown:.{digits}f} ± {half * scale:.{digits}f}"
