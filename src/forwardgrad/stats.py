"""Mean and spread over seeds or draws: the one place the library and the reports compute them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def finite_mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values; NaN, NaN for none,
    std 0 for one. Diverged runs (None, NaN, inf) are left out, not averaged in."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return mean, math.sqrt(var)


def mean_and_se(values: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and its standard error (None for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, None
    if x.size == 1:
        return float(x[0]), None
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def finite_mean_and_se(values: Iterable[float | None]) -> tuple[float, float | None]:
    """:func:`mean_and_se` of the finite values (diverged runs' None, NaN or inf left out);
    NaN and no SE when none is finite."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return mean_and_se(finite) if finite else (math.nan, None)
