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
