"""The paper's panel types (docs/paper.md#figures-and-tables) drawn with matplotlib's Agg canvas (no pyplot state).

Every function takes pandas tables from :mod:`gstlab.analysis.results` and an output path stem, writes
``<stem>.png`` and ``<stem>.pdf`` and returns the PNG path. ``colors`` (label -> colour, see :func:`palette`)
keeps a label's colour the same across the panels of a report."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats as sps

from gstlab import store
from gstlab.analysis.results import parse_eigenvalues
from gstlab.analysis.stats import correlation, mean_ci

DPI = 110
FORMATS = ("png", "pdf")  # the first is the one returned (and linked from report.md)
SIDE_NAMES = {"smallest": "Prune_S", "random": "Prune_R", "largest": "Prune_L"}
LABELS = {
    "mean_stability": "Mean stability (%)", "best_test_acc": "Best test accuracy (%)",
    "generalization_gap": "Generalization gap (train - test, %)", "eig_sum": "Σ top-k Hessian eigenvalues",
    "grad_moment_trace": "Gradient second-moment trace", "tic": "TIC ratio Tr(C)/Tr(H)",
    "delta_w": "δw at loss increase 0.1", "iterative_rate": "Iterative pruning rate (%)",
}


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.2), squeeze: bool = True):
    """A figure on the Agg canvas (no pyplot, no global backend state) and its axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig, stem: str | Path) -> Path:
    """Write ``stem.png`` (dpi 110) and ``stem.pdf`` (:data:`FORMATS`); returns the PNG path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for fmt in FORMATS:  # whole files only: a killed report leaves the previous figure, not half of one
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI)
        store.atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buffer.getvalue())
    return stem.with_name(f"{stem.name}.{FORMATS[0]}")


def palette(labels) -> dict:
    """label -> colour, in order of first appearance (pass one palette to every panel of a report); distinct
    colours for any number of labels (tab10, then tab20, then evenly spaced along turbo: a grid's labels
    outnumber ten)."""
    labels = list(dict.fromkeys(labels))
    n = len(labels)
    if n <= 10:
        return {label: matplotlib.colormaps["tab10"](i) for i, label in enumerate(labels)}
    if n <= 20:  # tab20's dark shades first (tab10's hues), then its light ones
        return {label: matplotlib.colormaps["tab20"](2 * i % 20 + i // 10) for i, label in enumerate(labels)}
    cmap = matplotlib.colormaps["turbo"]
    return {label: cmap(0.05 + 0.9 * i / (n - 1)) for i, label in enumerate(labels)}


def _colors(colors: dict | None, labels) -> dict:
    labels = list(dict.fromkeys(labels))
    return colors if colors is not None and all(label in colors for label in labels) else palette(labels)


def _label_order(runs: pd.DataFrame, table: pd.DataFrame) -> list:
    present = set(table["label"])
    return [label for label in dict.fromkeys(runs["label"]) if label in present]


def _per_epoch(group: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = [{"epoch": e, **mean_ci(g[column]), "min": g[column].min(), "max": g[column].max()}
            for e, g in group.groupby("epoch")]
    return pd.DataFrame(rows)


def _band(per: pd.DataFrame) -> tuple[pd.Series, pd.Series, str]:
    """95% t interval over seeds from 3 seeds on; with 2 seeds (t = 12.7) the interval says nothing readable,
    so the band is the range of the seeds instead. Accuracy lies in [0, 100]."""
    if per["n"].min() >= 3:
        return per["ci_low"].clip(lower=0.0), per["ci_high"].clip(upper=100.0), "95% CI over seeds"
    return per["min"], per["max"], "range over seeds"


def _zoom_to_means(ax, means: list[pd.Series]) -> None:
    """Like the paper's fixed y-limits: show every mean line after the first epoch, bands may be cut."""
    values = pd.concat(means).dropna() if means else pd.Series(dtype=float)
    if not values.empty:
        ax.set_ylim(max(values.min() - 1.0, 0.0), min(values.max() + 1.0, 100.0))


def dynamics(epochs: pd.DataFrame, runs: pd.DataFrame, stem, title: str, rename: dict | None = None,
             colors: dict | None = None) -> Path:
    """Test accuracy (post-prune) vs epoch per label: mean line and band (see ``_band``); legend
    'xx.xx% Stable (label)'."""
    rename = rename or {}
    fig, ax = subplots(figsize=(6.4, 4.2))
    colors = _colors(colors, runs["label"])
    kinds, means = set(), []
    for label in _label_order(runs, epochs):
        per = _per_epoch(epochs[epochs["label"] == label], "test_acc")
        stab = runs.loc[runs["label"] == label, "mean_stability"].mean()
        name = f"{stab:.2f}% Stable ({rename.get(label, label)})"
        ax.plot(per["epoch"], per["mean"], color=colors[label], lw=1.4, label=name)
        means.append(per.loc[per["epoch"] > per["epoch"].min(), "mean"])
        low, high, kind = _band(per)
        kinds.add(kind)
        ax.fill_between(per["epoch"], low, high, color=colors[label], alpha=0.2, lw=0)
    _zoom_to_means(ax, means)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="Epoch", ylabel="Test accuracy (%, after the epoch's event)")
    ax.set_title(f"{title}\n(line: mean; band: {' / '.join(sorted(kinds))})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, stem)


def _annotation(corr: dict) -> str:
    return (f"Pearson r = {corr['pearson_r']:.3f}, p = {corr['pearson_p']:.3g}\n"
            f"Kendall τ = {corr['kendall_tau']:.3f}, p = {corr['kendall_p']:.3g}\nn = {corr['n']}")


def scatter(runs: pd.DataFrame, x: str, y: str, stem, title: str, corr: dict | None = None,
            colors: dict | None = None) -> Path:
    """One point per run coloured by label, least-squares line, Pearson and Kendall annotated."""
    corr = correlation(runs[x], runs[y]) if corr is None else corr
    fig, ax = subplots(figsize=(7.2, 4.4))
    colors = _colors(colors, runs["label"])
    for label, g in runs.groupby("label", sort=False):
        ax.scatter(g[x], g[y], s=22, color=colors[label], label=str(label), alpha=0.85)
    if np.isfinite(corr["pearson_r"]):
        data = runs[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
        fit = sps.linregress(data[x], data[y])
        xs = np.linspace(data[x].min(), data[x].max(), 50)
        ax.plot(xs, fit.intercept + fit.slope * xs, color="0.3", lw=1)
    ax.text(1.03, 0.0, _annotation(corr), transform=ax.transAxes, va="bottom", fontsize=8)
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return save(fig, stem)


def _rate_axis(ax, rates) -> None:
    """Symlog base-2 x axis (Figure 3) with the study's rates as ticks."""
    rates = sorted(float(r) for r in set(rates))
    ax.set_xscale("symlog", base=2, linthresh=1)
    ax.set_xlim(rates[0] * 0.8, rates[-1] * 1.25)
    ax.set_xticks(rates, [f"{r:.3g}" for r in rates])
    ax.set_xlabel(LABELS["iterative_rate"])
    ax.grid(alpha=0.3)


def _rate_errorbars(ax, runs: pd.DataFrame, column: str) -> None:
    for side, g in runs.groupby("side", sort=False):
        rows = pd.DataFrame([{"rate": r, **mean_ci(gg[column])} for r, gg in g.groupby("iterative_rate")])
        err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        ax.errorbar(rows["rate"], rows["mean"], yerr=np.nan_to_num(err), marker="o", ms=4, capsize=3,
                    label=SIDE_NAMES.get(side, str(side)))
    _rate_axis(ax, runs["iterative_rate"])
    ax.set_ylabel(LABELS[column])
    ax.legend(fontsize=8)


def rate_panels(runs: pd.DataFrame, corr_by_rate: pd.DataFrame, stem, title: str) -> Path:
    """Figure 3: best accuracy and mean stability vs rate per side (mean, 95% CI) and Pearson r per rate."""
    fig, axes = subplots(1, 3, figsize=(14, 4.2))
    _rate_errorbars(axes[0], runs, "best_test_acc")
    _rate_errorbars(axes[1], runs, "mean_stability")
    c = corr_by_rate.sort_values("iterative_rate")
    axes[2].plot(c["iterative_rate"], c["pearson_r"], marker="o", color="C3", label="Pearson r")
    axes[2].fill_between(c["iterative_rate"], c["pearson_ci_low"], c["pearson_ci_high"], color="C3", alpha=0.2,
                         label="95% CI")
    axes[2].axhline(0, color="0.5", lw=0.8)
    _rate_axis(axes[2], runs["iterative_rate"])
    axes[2].set_ylabel("Pearson r (stability, best accuracy)")
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, stem)


def _top_by_magnitude(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    top = values[np.argsort(-np.abs(values), kind="stable")][:k]
    out[: top.size] = top
    return out


def _spectra(curv: pd.DataFrame, k: int) -> dict:
    """label -> [runs, k] eigenvalues sorted by magnitude (NaN padded)."""
    out = {}
    for label, g in curv.groupby("label", sort=False):
        out[label] = np.vstack([_top_by_magnitude(parse_eigenvalues(v), k) for v in g["eigenvalues"]])
    return out


def eigen_bars(curv: pd.DataFrame, stem, title: str, k: int = 10, colors: dict | None = None) -> Path:
    """E1: mean of the top-k eigenvalues (by |λ|) per label, grouped bars."""
    spectra = _spectra(curv, k)
    fig, ax = subplots(figsize=(7, 4))
    width = 0.8 / max(len(spectra), 1)
    colors = _colors(colors, spectra)
    for i, (label, arr) in enumerate(spectra.items()):
        ax.bar(np.arange(k) + i * width, np.nanmean(arr, axis=0), width, color=colors[label], label=str(label))
    ax.set(xlabel="Eigenvalue index (by magnitude)", ylabel="Hessian eigenvalue", title=title)
    ax.set_xticks(np.arange(k) + 0.4 - width / 2, [str(i) for i in range(k)])
    ax.legend(fontsize=7)
    return save(fig, stem)


def spectrum_bands(curv: pd.DataFrame, stem, title: str, colors: dict | None = None) -> Path:
    """E2: eigenvalue vs magnitude index (mean, 10-90% band over runs) and |λ| vs index (log y)."""
    k = max((parse_eigenvalues(v).size for v in curv["eigenvalues"]), default=0)
    spectra = _spectra(curv, max(k, 1))
    fig, axes = subplots(1, 2, figsize=(11, 4))
    colors = _colors(colors, spectra)
    for label, arr in spectra.items():
        idx = np.arange(1, arr.shape[1] + 1)
        lo, hi = np.nanpercentile(arr, [10, 90], axis=0)
        axes[0].plot(idx, np.nanmean(arr, axis=0), color=colors[label], label=str(label))
        axes[0].fill_between(idx, lo, hi, color=colors[label], alpha=0.2, lw=0)
        axes[1].plot(idx, np.nanmean(np.abs(arr), axis=0), color=colors[label], label=str(label))
    axes[0].set_xscale("symlog")
    axes[0].set(xlabel="Index (by magnitude)", ylabel="Hessian eigenvalue", title=title)
    axes[1].set_yscale("log")
    axes[1].set(xlabel="Index (by magnitude)", ylabel="|Hessian eigenvalue|", title=f"{title}: magnitudes")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save(fig, stem)


def eps_curves(eps: pd.DataFrame, stem, title: str, directions: int = 9, max_eps: float | None = None,
               colors: dict | None = None) -> Path:
    """E4: loss increase (loss - base_loss) vs eps per eigenvector direction, one line per label (mean)."""
    eps = eps.assign(increase=eps["loss"] - eps["base_loss"])
    if max_eps is not None:
        eps = eps[eps["eps"].abs() <= max_eps]
    dirs = sorted(eps["direction"].unique())[:directions]
    ncols = min(3, max(len(dirs), 1))
    nrows = max(1, -(-len(dirs) // ncols))
    fig, axes = subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    colors = _colors(colors, eps["label"])
    for ax, d in zip(axes.flat, dirs):
        for label, g in eps[eps["direction"] == d].groupby("label", sort=False):
            mean = g.groupby("eps")["increase"].mean()
            ax.plot(mean.index, mean.values, color=colors[label], label=str(label), lw=1.2)
        ax.set(xlabel="ε (step along unit eigenvector)", ylabel="Test loss increase", title=f"v{d}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dirs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, stem)
