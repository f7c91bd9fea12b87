"""How the reports write numbers: a fixed number of decimals, p-values to 3 significant digits, CIs in
brackets, and "n/a" for what is missing or not finite."""

from __future__ import annotations

import math


def number(x, nd: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{nd}f}"


def pvalue(x) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.3g}"


def interval(lo, hi, nd: int = 2) -> str:
    return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.{nd}f}, {hi:.{nd}f}]"


def value(x) -> str:
    """A grid value as a study file writes it, from index.csv as pandas reads it back: ``null`` for a missing one
    (read as NaN), ``1000`` for a whole number that a NaN beside it made a float (read as 1000.0)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "null"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)
