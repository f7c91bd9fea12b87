"""Statistics of a study, all from scipy (docs/paper.md#statistics): t confidence intervals of means, Pearson and
Kendall correlations with 95% CIs, Student's t-test (Table F1). Degenerate input (too few points, constant values) gives
NaN, never an exception."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

NAN = math.nan
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _clean(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean, sample std (ddof=1) and the t interval of the mean; NaN CI when n < 2."""
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return {"mean": NAN, "std": NAN, "n": 0, "ci_low": NAN, "ci_high": NAN}
    mean = float(np.mean(x))
    if n < 2:
        return {"mean": mean, "std": NAN, "n": 1, "ci_low": NAN, "ci_high": NAN}
    sem = float(stats.sem(x))
    if sem == 0.0:
        low = high = mean
    else:
        low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "std": float(np.std(x, ddof=1)), "n": n, "ci_low": float(low), "ci_high": float(high)}


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _kendall_ci(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[float, float]:
    """Paired bootstrap CI of Kendall's tau (BCa, percentile if BCa is undefined), fixed seed.

    A resample whose x or y values are all tied has no ordering information; its tau (undefined) counts as 0.
    """
    def tau(a, b):
        value = stats.kendalltau(a, b).statistic
        return value if np.isfinite(value) else 0.0

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x, y), tau, paired=True, vectorized=False, confidence_level=confidence,
                                  n_resamples=BOOTSTRAP_RESAMPLES, method=method,
                                  rng=np.random.default_rng(BOOTSTRAP_SEED))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    return NAN, NAN


def correlation(x, y, confidence: float = 0.95, kendall_ci: bool = True) -> dict:
    """Pearson r (CI from scipy) and Kendall tau (paired bootstrap CI; NaN without ``kendall_ci``) of paired
    samples (NaN pairs dropped)."""
    x, y = _pairs(x, y)
    out = dict.fromkeys(("pearson_r", "pearson_p", "pearson_ci_low", "pearson_ci_high",
                         "kendall_tau", "kendall_p", "kendall_ci_low", "kendall_ci_high"), NAN)
    out = {"n": int(x.size), **out}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = stats.pearsonr(x, y)
        ci = pr.confidence_interval(confidence_level=confidence)
        kt = stats.kendalltau(x, y)
    out.update(pearson_r=float(pr.statistic), pearson_p=float(pr.pvalue), pearson_ci_low=float(ci.low),
               pearson_ci_high=float(ci.high), kendall_tau=float(kt.statistic), kendall_p=float(kt.pvalue))
    if kendall_ci:
        out["kendall_ci_low"], out["kendall_ci_high"] = _kendall_ci(x, y, confidence)
    return out


def ttest(a, b, confidence: float = 0.95) -> dict:
    """Student's two-sample t-test, equal variances (``scipy.stats.ttest_ind(equal_var=True)``, Table F1), with
    the effect size: the difference of means ``diff = mean_a - mean_b``, its pooled-variance t interval
    (``diff_ci_low``, ``diff_ci_high``) and Cohen's d (difference over the pooled standard deviation)."""
    a, b = _clean(a), _clean(b)
    out = {"t": NAN, "p": NAN, "df": a.size + b.size - 2 if a.size and b.size else NAN,
           "mean_a": float(np.mean(a)) if a.size else NAN, "mean_b": float(np.mean(b)) if b.size else NAN,
           "n_a": int(a.size), "n_b": int(b.size), "diff": NAN, "diff_ci_low": NAN, "diff_ci_high": NAN,
           "cohens_d": NAN}
    if a.size < 1 or b.size < 1 or a.size + b.size < 3:
        return out
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.ttest_ind(a, b, equal_var=True)
        diff = out["mean_a"] - out["mean_b"]
        pooled_var = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / out["df"]
        half = stats.t.ppf(0.5 + confidence / 2, out["df"]) * math.sqrt(pooled_var * (1 / a.size + 1 / b.size))
    out.update(diff=float(diff), diff_ci_low=float(diff - half), diff_ci_high=float(diff + half))
    if not _no_spread(math.sqrt(pooled_var), np.concatenate([a, b])):
        out.update(t=float(res.statistic), p=float(res.pvalue), cohens_d=float(diff / math.sqrt(pooled_var)))
    return out


def _no_spread(sd: float, values: np.ndarray) -> bool:
    """A standard deviation that is zero up to float rounding of ``values``: t, p and d would be +-inf and 0
    (scipy), a 'significant' result from values that do not vary; such a test is not testable."""
    return not sd > 1e-9 * max(1.0, float(np.max(np.abs(values))))


def paired_ttest(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> dict:
    """Paired t-test over the keys (seeds) that ``a`` and ``b`` share with finite values
    (``scipy.stats.ttest_rel``): the mean difference ``diff = mean(a - b)``, its t interval and Cohen's d_z
    (mean difference over the standard deviation of the differences). Same keys as :func:`ttest`; ``n_a`` and
    ``n_b`` are the number of pairs."""
    for name, values in (("a", a), ("b", b)):
        _check_keys(values, name)
    joined = pd.concat([pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")], axis=1,
                       join="inner").dropna()
    x, y = joined.iloc[:, 0].to_numpy(float), joined.iloc[:, 1].to_numpy(float)
    n = len(x)
    out = {"t": NAN, "p": NAN, "df": n - 1 if n >= 2 else NAN, "mean_a": float(x.mean()) if n else NAN,
           "mean_b": float(y.mean()) if n else NAN, "n_a": n, "n_b": n, "diff": NAN, "diff_ci_low": NAN,
           "diff_ci_high": NAN, "cohens_d": NAN}
    if n < 2:
        return out
    d = x - y
    sd = float(np.std(d, ddof=1))
    diff = float(d.mean())
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(x, y)
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    out.update(diff=diff, diff_ci_low=diff - half, diff_ci_high=diff + half)
    if not _no_spread(sd, np.concatenate([x, y])):
        out.update(t=float(res.statistic), p=float(res.pvalue), cohens_d=diff / sd)
    return out


def _check_keys(values: pd.Series, name: str) -> None:
    """A paired test pairs by key: a missing key would pair with another missing one, a repeated key with each
    of the other side's values (pandas pairs them all)."""
    keys = values.index
    if keys.hasnans:
        raise ValueError(f"paired t-test: {name} has a value without a key (seed); each value needs its own")
    repeated = list(dict.fromkeys(keys[keys.duplicated()]))
    if repeated:
        raise ValueError(f"paired t-test: {name} has key(s) {', '.join(map(str, repeated))} more than once; "
                         f"each key pairs one value with one")


def group_table(df: pd.DataFrame, by: str | Sequence[str], columns: Sequence[str],
                confidence: float = 0.95) -> pd.DataFrame:
    """Per group (in order of first appearance): ``n`` and ``<col>_mean/_std/_ci_low/_ci_high`` per column."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n"] = len(group)
        for col in columns:
            ci = mean_ci(pd.to_numeric(group[col], errors="coerce"), confidence)
            row.update({f"{col}_{k}": ci[k] for k in ("mean", "std", "ci_low", "ci_high")})
        rows.append(row)
    cols = [*keys, "n", *(f"{c}_{k}" for c in columns for k in ("mean", "std", "ci_low", "ci_high"))]
    return pd.DataFrame(rows, columns=cols)


def correlation_line(name: str, c: dict) -> str:
    """One line for a :func:`correlation` result (post-hoc scripts print these)."""
    return (f"{name}: n = {c['n']}, Pearson r = {c['pearson_r']:.3f} [{c['pearson_ci_low']:.3f}, "
            f"{c['pearson_ci_high']:.3f}], p = {c['pearson_p']:.3g}; Kendall tau = {c['kendall_tau']:.3f}, "
            f"p = {c['kendall_p']:.3g}")


def ttest_line(name: str, t: dict) -> str:
    """One line for a :func:`ttest` result: the difference with its CI, Cohen's d, t, df, p."""
    return (f"{name}: difference {t['diff']:.2f} [{t['diff_ci_low']:.2f}, {t['diff_ci_high']:.2f}], "
            f"Cohen's d = {t['cohens_d']:.2f}, t = {t['t']:.3f}, df = {t['df']}, p = {t['p']:.3g}")
