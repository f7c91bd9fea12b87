"""``gst report``: turn a study directory into the paper's figure(s), tables and ``report/report.md``.

The study file's ``figure`` key picks the panels (docs/paper.md#figures-and-tables); every number in the
report (statistics, verdicts) is computed from the study's own runs. Failed and unfinished runs are listed and
left out of the analysis.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gstlab import store
from gstlab.analysis import figures as F
from gstlab.analysis import measures
from gstlab.analysis.results import (
    LEFT_OUT,
    last_probes,
    load_curvature,
    load_epochs,
    load_eps,
    load_events,
    load_study,
    machine_lines,
)
from gstlab.analysis.stats import correlation, group_table, paired_ttest, ttest
from gstlab.analysis.text import interval as _ci
from gstlab.analysis.text import number as _f
from gstlab.analysis.text import pvalue as _p
from gstlab.analysis.text import value as _value
from gstlab.analysis.window import common_window_start, with_window

KINDS = ("figure2", "figure3", "figure4", "figure5", "figure6", "figureB2", "figureC3", "figureD2", "figureE",
         "tableC1", "tableF1", "generic")
PAPER_FIGURE = {"figure2": "Figure 2", "figure3": "Figure 3", "figure4": "Figure 4", "figure5": "Figure 5",
                "figure6": "Figure 6", "figureB2": "Figure B2", "figureC3": "Figure C3", "tableC1": "Table C1",
                "figureD2": "Figure D2", "figureE": "Figures E1-E6", "tableF1": "Table F1"}
ALPHA = 0.05
REPORT_DIR = "report"  # a study's report folder, beside its index.csv
SUMS = "SHA256SUMS"  # in a report folder: the SHA-256 of each file, in sha256sum's format
FLATNESS_COLUMNS = ("eig_sum", "grad_moment_trace", "tic", "delta_w")
# (name, statement, x, y, expected sign of Pearson r)
TRADEOFF = ("Tradeoff", "less stable pruning → higher best test accuracy", "mean_stability", "best_test_acc", -1)
GAP = ("Generalization gap", "less stable pruning → smaller generalization gap", "mean_stability",
       "generalization_gap", 1)
MEMORIZATION = ("Memorization", "less stable pruning → fewer noisy training labels memorized (at the common-window "
                "best epoch)", "mean_stability", "window_memorization", 1)
FLATNESS = ("Flatness", "less stable pruning → flatter minimum (smaller Σ top-k Hessian eigenvalues)",
            "mean_stability", "eig_sum", 1)


# ------------------------------------------------------------------------------------------------ selections


def _text(runs: pd.DataFrame, col: str) -> pd.Series:
    if col not in runs:
        return pd.Series("", index=runs.index)
    return runs[col].astype(object).where(runs[col].notna(), "").astype(str).str.strip()


def pruned(runs: pd.DataFrame) -> pd.Series:
    """Runs that prune (a ``side`` is set); the others are the no-pruning baselines."""
    return _text(runs, "side") != ""


def scratch(runs: pd.DataFrame) -> pd.Series:
    return runs["scratch"].fillna(False).astype(bool) if "scratch" in runs else pd.Series(False, index=runs.index)


def random_side(runs: pd.DataFrame) -> pd.Series:
    return _text(runs, "side") == "random"


def intervention(runs: pd.DataFrame) -> pd.Series:
    """The intervention kind, '' for permanent pruning and for baselines."""
    kind = _text(runs, "intervention")
    return kind.where(kind != "none", "")


def arch_groups(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(arch, runs) per architecture, or one ('', runs) group when the study has a single one."""
    archs = list(dict.fromkeys(_text(runs, "arch")))
    if len(archs) <= 1:
        return [("", runs)]
    return [(a, runs[_text(runs, "arch") == a]) for a in archs]


# ----------------------------------------------------------------------------------------------- formatting


def corr_verdict(r: float, p: float, sign: int) -> str:
    """supported (expected sign, p < 0.05) / consistent but not significant / not supported / not testable."""
    if not math.isfinite(r):
        return "not testable"
    if r * sign > 0:
        return "supported" if p < ALPHA else "consistent but not significant"
    return "not supported"


def ttest_verdict(t: dict) -> str:
    """Group A better than group B: supported when mean A > mean B with p < 0.05."""
    if not math.isfinite(t["p"]):
        return "not testable"
    if t["mean_a"] > t["mean_b"]:
        return "supported" if t["p"] < ALPHA else "consistent but not significant"
    return "not supported"


# -------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    kind: str
    out: Path
    runs: pd.DataFrame
    epochs: pd.DataFrame
    curvature: pd.DataFrame
    eps: pd.DataFrame
    figures: list[tuple[str, Path]] = field(default_factory=list)
    correlations: list[dict] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    colors: dict = field(default_factory=dict)
    grid: tuple[str, ...] = ()  # the study's grid keys: a pruned run is compared with the baseline of its point
    notes: list[str] = field(default_factory=list)  # descriptive lines beside the claims (no test)
    tested: int = 0  # claims with a test result (not 'not testable')
    _corr_cache: dict = field(default_factory=dict)

    def add_figure(self, title: str, png: Path) -> None:
        self.figures.append((title, png))

    def corr(self, runs: pd.DataFrame, x: str, y: str, scope: str) -> dict:
        """Correlation of x and y over ``runs``, recorded once per (scope, x, y, runs) for the correlations
        table (two groups whose scopes read alike keep their own numbers). Over runs of several grid points it
        is followed in the table by the correlation within each point (listed under ``within``)."""
        key = (scope, x, y, tuple(sorted(runs["run_id"])) if "run_id" in runs else len(runs))
        if key not in self._corr_cache:
            c = correlation(runs[x], runs[y]) if x in runs and y in runs else correlation([], [])
            self._corr_cache[key] = {"runs": scope + self.pooled(runs), "x": x, "y": y, **c}
            self.correlations.append(self._corr_cache[key])
            self._corr_cache[key]["within"] = [(where, self.corr(g, x, y, f"{scope}; grid point {where}"))
                                               for where, g in self.points(runs)]
        return self._corr_cache[key]

    def points(self, runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        """(``key=value, ...``, runs) per grid point of ``runs`` by the grid keys that vary; [] for one point."""
        keys = varying(runs, self.grid)
        if not keys:
            return []
        return [(point_name(keys, values), g) for values, g in runs.groupby(keys, sort=False, dropna=False)]

    def pooled(self, runs: pd.DataFrame) -> str:
        """``; pooled over grid points (key: v1, v2)`` where ``runs`` span several points of the study's grid (a
        relation within each point can differ from the pooled one, even in sign), else ""."""
        varied = {k: list(dict.fromkeys(map(_value, runs[k]))) for k in varying(runs, self.grid)}
        return "; pooled over grid points ({})".format("; ".join(
            f"{k}: {', '.join(v)}" for k, v in varied.items())) if varied else ""

    def corr_claim(self, claim: tuple, runs: pd.DataFrame, scope: str) -> dict:
        name, statement, x, y, sign = claim
        c = self.corr(runs, x, y, scope)
        scope = c["runs"]
        verdict = corr_verdict(c["pearson_r"], c["pearson_p"], sign)
        if verdict == "not testable":
            detail = f"n = {c['n']} runs (needs at least 3 runs with varying values)"
        else:
            detail = (f"Pearson r = {c['pearson_r']:.3f} {_ci(c['pearson_ci_low'], c['pearson_ci_high'], 3)}, "
                      f"p = {_p(c['pearson_p'])}; Kendall τ = {c['kendall_tau']:.3f}, p = {_p(c['kendall_p'])}; "
                      f"n = {c['n']} runs")
        if c["within"]:  # the pooled relation can differ from each point's, even in sign: both are shown
            detail += "; within each grid point (descriptive, no verdict): " + "; ".join(
                f"{where}: r = {_f(w['pearson_r'], 3)}, n = {w['n']}" for where, w in c["within"])
        self.claims.append(f"**{name}** ({statement}; expected sign of r: {'+' if sign > 0 else '−'}), {scope}: "
                           f"{detail} → verdict: **{verdict}**.")
        self.tested += verdict != "not testable"
        return c

    def ttest_claim(self, name: str, a_name: str, a: pd.Series, b_name: str, b: pd.Series,
                    paired: bool = False, measure: str = "best test accuracy") -> dict:
        """``a`` beats ``b``: Student t-test, or with ``paired`` a paired t-test over the seeds (the index of
        ``a`` and ``b``) that both have."""
        t = paired_ttest(a, b) if paired else ttest(a, b)
        verdict = ttest_verdict(t)
        test = "paired t-test over seeds, Cohen's d_z" if paired else "Student t-test, equal variances"
        count = f"n = {t['n_a']} pairs" if paired else f"n = {t['n_a']} vs {t['n_b']} runs"
        self.claims.append(
            f"**{name}** ({a_name} reaches a higher {measure} than {b_name}; {test}): "
            f"mean {_f(t['mean_a'])}% vs {_f(t['mean_b'])}%, difference {_f(t['diff'])} points "
            f"{_ci(t['diff_ci_low'], t['diff_ci_high'])}, Cohen's d = {_f(t['cohens_d'])}, t = {_f(t['t'], 3)}, "
            f"df = {_f(t['df'], 0)}, p = {_p(t['p'])}, {count} → verdict: **{verdict}**.")
        self.tested += verdict != "not testable"
        return t

    def ttests_over_seeds(self, name: str, a_name: str, a: pd.Series, b_name: str, b: pd.Series,
                          measure: str) -> None:
        """``a`` beats ``b`` (both indexed by seed): a Student t-test, then a paired one (claim "NAME, paired")
        where each side has one run per seed."""
        self.ttest_claim(name, a_name, a, b_name, b, measure=measure)
        if a.index.is_unique and b.index.is_unique:
            self.ttest_claim(f"{name}, paired", a_name, a, b_name, b, paired=True, measure=measure)
        else:
            self.notes.append(f"{name}, paired ({a_name} vs {b_name}): not tested, a seed has two runs on one side")

    def window_benefits(self, runs: pd.DataFrame, baseline: pd.DataFrame, base_name: str, prefix: str = "",
                        name: str = "Benefit") -> None:
        """Each label of ``runs`` against ``baseline`` over the common window (both Student and paired over
        seeds), with the baseline's early-stopping peak alongside (a separate number, no test)."""
        starts = pd.concat([runs, baseline])["window_start"].dropna() if "window_start" in runs else []
        if not len(baseline) or "window_best_test_acc" not in runs or not len(starts):
            return
        start = int(starts.iloc[0])
        measure = f"best test accuracy over the common window (epochs ≥ {start})"
        base = baseline.set_index("seed")["window_best_test_acc"]
        for label, g in runs.groupby("label", sort=False):
            a = g.set_index("seed")["window_best_test_acc"]
            self.ttests_over_seeds(f"{name}, common window", f"{prefix}{label}", a, base_name, base, measure)
        peak = baseline["peak_test_acc"] if "peak_test_acc" in baseline else pd.Series(dtype=float)
        if peak.notna().any():
            self.notes.append(
                f"Early-stopping baseline (descriptive): {base_name}'s peak test accuracy over all epochs is "
                f"{_f(peak.mean())}% (mean of {int(peak.notna().sum())} runs, median epoch "
                f"{_f(baseline['peak_epoch'].median(), 0)}), against {_f(base.mean())}% over the common window.")

    # ---- panels
    def dynamics(self, runs: pd.DataFrame, stem: str, title: str, rename: dict | None = None) -> None:
        epochs = self.epochs[self.epochs["run_id"].isin(runs["run_id"])]
        if len(epochs):
            self.add_figure(title, F.dynamics(epochs, runs, self.out / stem, title, rename=rename,
                                              colors=self.colors))

    def scatter(self, runs: pd.DataFrame, x: str, y: str, stem: str, title: str, corr: dict | None = None) -> None:
        if x in runs and y in runs and runs[[x, y]].notna().all(axis=1).any():
            self.add_figure(title, F.scatter(runs, x, y, self.out / stem, title, corr=corr, colors=self.colors))

    def tradeoff(self, runs: pd.DataFrame, tag: str, scope: str, gap_panel: bool = False) -> None:
        """Stability vs best accuracy scatter (and gap), correlations and the tradeoff and gap claims."""
        c = self.corr_claim(TRADEOFF, runs, scope)
        self.scatter(runs, "mean_stability", "best_test_acc", f"stability_accuracy{tag}",
                     f"Stability vs best test accuracy\n{scope}", corr=c)
        g = self.corr_claim(GAP, runs, scope)
        if gap_panel:
            self.scatter(runs, "mean_stability", "generalization_gap", f"stability_gap{tag}",
                         f"Stability vs generalization gap\n{scope}", corr=g)


def _tag(arch: str) -> tuple[str, str]:
    """File-name suffix and title/scope prefix of an architecture group."""
    return (f"_{arch}", f"{arch}: ") if arch else ("", "")


# ------------------------------------------------------------------------------------------ figure builders


def _figure2(rep: Report, include_random: bool = False) -> None:
    """Per arch: dynamics (no Prune_R, no scratch) and stability vs accuracy over the pruned runs."""
    for arch, runs in arch_groups(rep.runs):
        tag, prefix = _tag(arch)
        rep.dynamics(runs[~random_side(runs) & ~scratch(runs)], f"dynamics{tag}", f"{prefix}Test accuracy")
        keep = pruned(runs) & ~scratch(runs) & (include_random | ~random_side(runs))
        kinds = "pruned runs, no scratch" + ("" if include_random else ", no Prune_R")
        rep.tradeoff(runs[keep], tag, f"{prefix}{kinds}")
        for tested, baseline, base_name in with_baselines(rep, runs[keep], runs[~pruned(runs)], "No Pruning"):
            for label, g in tested.groupby("label", sort=False):
                rep.ttest_claim("Benefit", f"{prefix}{label}", g["best_test_acc"], base_name, baseline["best_test_acc"])
            rep.window_benefits(tested, baseline, base_name, prefix)
            _memorization_vs(rep, tested, baseline, base_name, prefix)
        _memorization(rep, runs[keep], f"{prefix}{kinds}")


def _noisy(runs: pd.DataFrame) -> bool:
    return "window_memorization" in runs and bool(runs["window_memorization"].notna().any())


def _memorization(rep: Report, runs: pd.DataFrame, scope: str) -> None:
    """Under label noise: stability vs memorization over ``runs`` at each run's common-window best epoch."""
    if _noisy(runs):
        rep.corr_claim(MEMORIZATION, runs, scope)


def _memorization_vs(rep: Report, runs: pd.DataFrame, baseline: pd.DataFrame, base_name: str, prefix: str) -> None:
    """Under label noise: the baseline memorizing more than each label of ``runs`` (Student and paired over
    seeds) at each run's common-window best epoch."""
    if not _noisy(runs):
        return
    measure = "memorization (% of noisy training labels predicted as given, at the common-window best epoch)"
    base = baseline.set_index("seed")["window_memorization"]
    for label, g in runs.groupby("label", sort=False):
        a = g.set_index("seed")["window_memorization"]
        rep.ttests_over_seeds("Less memorization", base_name, base, f"{prefix}{label}", a, measure)


def with_baselines(rep: Report, runs: pd.DataFrame, unpruned: pd.DataFrame, name: str, claim: str = "Benefit"):
    """(runs of one grid point, the unpruned runs of that point, the baseline's name) for each grid point of
    ``runs`` whose baseline is one setting; a point without one, or with several (e.g. with and without label
    noise), gets a note instead of tests."""
    keys = [k for k in rep.grid if k in runs and pd.concat([runs[k], unpruned[k]]).nunique(dropna=False) > 1]
    points = runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]
    for values, tested in points:
        values = values if isinstance(values, tuple) else (values,)
        match = pd.Series(True, index=unpruned.index)
        for key, value in zip(keys, values):
            match &= unpruned[key].eq(value) | (unpruned[key].isna() & pd.isna(value))
        baseline, where = unpruned[match], point_name(keys, values)
        labels = list(dict.fromkeys(baseline["setting"] if "setting" in baseline else baseline["label"]))
        if len(labels) == 1:
            yield tested, baseline, f"{name} ({where})" if where else name
        elif len(tested):
            reason = "no unpruned run" if not labels else f"{len(labels)} unpruned settings ({', '.join(labels)})"
            rep.notes.append(f"{claim}{' at ' + where if where else ''}: not tested, {reason} to compare "
                             f"{', '.join(dict.fromkeys(tested['label']))} with; a baseline is one unpruned "
                             f"setting per grid point")


def _figure3(rep: Report) -> None:
    runs = rep.runs[pruned(rep.runs) & ~scratch(rep.runs)]  # scratch pruning has no iterative rate
    runs = runs[runs["iterative_rate"].notna()].assign(iterative_rate=lambda df: df["iterative_rate"].round(6))
    rows = []  # rates equal up to float rounding (100 * 0.5 / 10 and 100 * 0.55 / 11) are one group
    for rate, g in runs.groupby("iterative_rate"):
        c = rep.corr(g, "mean_stability", "best_test_acc", f"iterative rate {rate:.2f}%")
        rows.append({"iterative_rate": rate, **c})
        rep.scatter(g, "mean_stability", "best_test_acc", f"stability_accuracy_rate_{rate:.2f}",
                    f"Stability vs best test accuracy at iterative rate {rate:.2f}% (Figure C1)", corr=c)
    if rows:
        rep.add_figure("Figure 3", F.rate_panels(runs, pd.DataFrame(rows), rep.out / "figure3",
                                                 "Iterative pruning rate"))
    rep.tradeoff(runs, "", "all pruned runs, all rates pooled")


def _figure4(rep: Report) -> None:
    for arch, runs in arch_groups(rep.runs):
        tag, prefix = _tag(arch)
        rep.tradeoff(runs[pruned(runs)], tag, f"{prefix}pruned runs", gap_panel=True)


def _noise(rep: Report, panels: tuple[tuple[str, str], ...]) -> None:
    """Figure 5 / D2: dynamics of each intervention kind with the permanent Prune_L control and the baseline."""
    runs = rep.runs
    base, kind = ~pruned(runs), intervention(runs)
    rename = dict(zip(runs.loc[base, "label"], grid_labels(runs[base].assign(label="No Noise"), rep.grid)))
    control = pruned(runs) & (kind == "") & ~scratch(runs)
    for k, title in panels:
        rep.dynamics(runs[base | control | (kind == k)], f"dynamics_{k}", f"Test accuracy: {title}", rename=rename)
    for tested, baseline, base_name in with_baselines(rep, runs[kind != ""], runs[base], "No Noise (no pruning)",
                                                      "Noise"):
        for label, g in tested.groupby("label", sort=False):
            rep.ttest_claim("Noise", str(label), g["best_test_acc"], base_name, baseline["best_test_acc"])
        rep.window_benefits(tested, baseline, base_name, name="Noise")
    rep.tradeoff(runs[pruned(runs) & ~scratch(runs)], "", "pruned and intervention runs")


def _with_flatness(runs: pd.DataFrame, last: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the flatness statistics of their last probe row (``last``, from ``last_probes``)."""
    cols = [c for c in FLATNESS_COLUMNS if c in last]
    return runs.merge(last[["run_id", *cols]], on="run_id", how="left")


def _flatness(rep: Report) -> None:
    """Figure 6 / E: flatness vs stability and accuracy over all runs, E1 bars, E2 spectrum, E4 eps curves."""
    last = last_probes(rep.curvature)  # probe notes: in the generalization-measures section
    runs = _with_flatness(rep.runs, last)
    probed = "all runs" if "eig_sum" not in runs or runs["eig_sum"].notna().all() else "the runs with a probe"
    for col in FLATNESS_COLUMNS:
        name = F.LABELS[col]
        scope = f"{probed}, last probe"
        rep.scatter(runs, "mean_stability", col, f"stability_{col}", f"Stability vs {name}\n{scope}",
                    corr=rep.corr(runs, "mean_stability", col, probed))
        rep.scatter(runs, col, "best_test_acc", f"{col}_accuracy", f"{name} vs best test accuracy\n{scope}",
                    corr=rep.corr(runs, col, "best_test_acc", probed))
    rep.corr_claim(FLATNESS, runs, probed)
    rep.tradeoff(runs, "", "all runs (Figure E6)")
    if "eigenvalues" in last and last["eigenvalues"].notna().any():
        rep.add_figure("E1: top-10 eigenvalues", F.eigen_bars(last, rep.out / "E1_eigenvalues",
                                                              "Top-10 Hessian eigenvalues (mean over runs)",
                                                              colors=rep.colors))
        rep.add_figure("E2: spectrum", F.spectrum_bands(last, rep.out / "E2_spectrum",
                                                  "Hessian spectrum (mean, 10-90% of runs)", colors=rep.colors))
    if len(rep.eps):
        last_epoch = rep.eps.groupby("run_id")["epoch"].transform("max")
        rep.add_figure("E4: loss along eigenvectors",
                       F.eps_curves(rep.eps[rep.eps["epoch"] == last_epoch], rep.out / "E4_eps",
                                    "Test loss increase along the top Hessian eigenvectors v_i", colors=rep.colors))


def _figure_c3(rep: Report) -> None:
    rep.dynamics(rep.runs, "dynamics", "Test accuracy")
    rep.tradeoff(rep.runs[pruned(rep.runs)], "", "pruned runs", gap_panel=True)


def _table_c1(rep: Report) -> None:
    rep.tradeoff(rep.runs[pruned(rep.runs) & ~scratch(rep.runs)], "", "pruned runs, no scratch")


def _table_f1(rep: Report) -> None:
    runs = rep.runs
    side, perm = _text(runs, "side"), (intervention(runs) == "") & ~scratch(runs)
    acc = runs["best_test_acc"]
    large, small, scr = acc[perm & (side == "largest")], acc[perm & (side == "smallest")], acc[scratch(runs)]
    rows = []
    for b_name, b in (("Prune_S", small), ("Scratch", scr)):
        t = rep.ttest_claim("Prune_L advantage", "Prune_L", large, b_name, b)
        rows.append(f"| Prune_L vs {b_name} | {t['n_a']} vs {t['n_b']} | {_f(t['mean_a'])} vs {_f(t['mean_b'])} "
                    f"| {_f(t['t'], 3)} | {_f(t['df'], 0)} | {_p(t['p'])} |")
    rep.sections.append("## t-tests on best test accuracy (Student, equal variances)\n\n"
                        "| comparison | n | mean best acc (%) | t | df | p |\n|---|---|---|---|---|---|\n"
                        + "\n".join(rows) + "\n")
    rep.tradeoff(runs[pruned(runs) & ~scratch(runs)], "", "pruned runs, no scratch")


BUILDERS = {
    "figure2": _figure2, "figureB2": _figure2, "generic": lambda rep: _figure2(rep, include_random=True),
    "figure3": _figure3, "figure4": _figure4,
    "figure5": lambda rep: _noise(rep, (("zero", "Zeroing"), ("gaussian", "Gaussian"))),
    "figureD2": lambda rep: _noise(rep, (("zero_restore", "Zeroing with exact restoration"),)),
    "figure6": _flatness, "figureE": _flatness, "figureC3": _figure_c3, "tableC1": _table_c1, "tableF1": _table_f1,
}


# ------------------------------------------------------------------------------------------------ markdown


def _label_table(runs: pd.DataFrame) -> str:
    by = ["arch", "label"] if len(arch_groups(runs)) > 1 else ["label"]
    cols = ["mean_stability", "best_test_acc", "generalization_gap", "params_remaining_pct"]
    table = group_table(runs, by, cols)
    head = (f"| {' | '.join(by)} | n | mean stability (%) | stability std | best test acc (%) mean [95% CI] | std "
            f"| gap (%) | params remaining (%) |\n|{'---|' * (len(by) + 7)}\n")
    lines = [
        f"| {' | '.join(str(r[b]) for b in by)} | {r['n']} | {_f(r['mean_stability_mean'])} | "
        f"{_f(r['mean_stability_std'])} | "
        f"{_f(r['best_test_acc_mean'])} {_ci(r['best_test_acc_ci_low'], r['best_test_acc_ci_high'])} | "
        f"{_f(r['best_test_acc_std'])} | {_f(r['generalization_gap_mean'])} | {_f(r['params_remaining_pct_mean'])} |"
        for _, r in table.iterrows()]
    return head + "\n".join(lines) + "\n"


def _corr_table(rows: list[dict]) -> str:
    head = ("| runs | x | y | n | Pearson r [95% CI] | p | Kendall τ [95% CI] | p |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {c['runs']} | {c['x']} | {c['y']} | {c['n']} | {_f(c['pearson_r'], 3)} "
        f"{_ci(c['pearson_ci_low'], c['pearson_ci_high'], 3)} | {_p(c['pearson_p'])} | {_f(c['kendall_tau'], 3)} "
        f"{_ci(c['kendall_ci_low'], c['kendall_ci_high'], 3)} | {_p(c['kendall_p'])} |" for c in rows) + "\n"


def _status_lines(all_runs: pd.DataFrame, grid: tuple[str, ...]) -> list[str]:
    counts = all_runs["status"].value_counts()
    n_ok, n_failed = int(counts.get("finished", 0)), int(counts.get("failed", 0))
    lines = [f"- runs: {len(all_runs)} in index.csv; {n_ok} finished, {n_failed} failed, "
             f"{len(all_runs) - n_ok - n_failed} not finished. The analysis uses the {n_ok} finished runs."]
    n_left = int(all_runs["status"].isin(LEFT_OUT).sum())
    if n_left:
        lines.append(f"- **{n_left} runs left out because their files do not match their manifest (damaged) or "
                     f"index.csv points outside the study**; `gst sweep` on the study again redoes them.")
    bad = all_runs[all_runs["status"] != "finished"]
    if len(bad):
        lines += ["", "Excluded runs:", "", "| run_id | label | seed | status | reason |", "|---|---|---|---|---|"]
        reason, label = _text(bad, "failure"), grid_labels(all_runs, grid)  # labels name their grid point
        lines += [f"| {r['run_id']} | {label[i]} | {r['seed']} | {r['status']} | {reason[i] or '-'} |"
                  for i, r in bad.iterrows()]
    return lines


def _window_lines(all_runs: pd.DataFrame, grid: tuple[str, ...]) -> list[str]:
    """Where the common window starts, which setting sets it, and which pruned settings (or grid points of one)
    had no finished run to take part (with all of one setting's runs failed, the window starts at an earlier
    setting's last event)."""
    if "window_start" not in all_runs or not all_runs["window_start"].notna().any():
        return []
    start = int(all_runs["window_start"].dropna().iloc[0])
    candidates = all_runs[pruned(all_runs) & ~scratch(all_runs)]
    finished = candidates["status"] == "finished"
    setters = candidates[finished & (pd.to_numeric(candidates["last_pruned_epoch"], errors="coerce") == start)]
    lines = [f"- common window: epochs ≥ {start}, the latest last pruning epoch among the finished pruned runs "
             f"({', '.join(map(str, dict.fromkeys(setters['label'])))})" if len(setters) else
             "- common window: every epoch (no finished run prunes)"]
    named = grid_labels(candidates, grid)  # a label repeated across architectures is one setting per arch
    if len(arch_groups(candidates)) > 1:
        named = _text(candidates, "arch") + ": " + named
    missing = [str(name) for name, g in candidates.groupby(named, sort=False)
               if not (g["status"] == "finished").any()]
    if missing:
        lines.append(f"- **no finished run of {', '.join(missing)}: the common window may start earlier than the "
                     f"study's schedule**")
    return lines


def _scale_text(spec: dict) -> str:
    """The study's scale, which only preset settings read (config and inline settings give their own sizes);
    as written where the file lists no settings (or is missing: n/a)."""
    if "settings" not in spec:
        return f"scale: `{spec.get('scale', 'n/a')}`"
    from gstlab.study import has_preset  # noqa: PLC0415

    if not has_preset(spec["settings"]):
        return "scale: none (no preset setting; each sets its own sizes)"
    return f"scale: `{spec.get('scale', 'mini')}`"


def _criteria_lines(runs: pd.DataFrame) -> list[str]:
    """The score criteria of the pruned runs, described as their registry entries describe them."""
    from gstlab.registry import criteria  # noqa: PLC0415

    used = [c for c in dict.fromkeys(_text(runs, "criterion")) if c]
    described = [f"`{c}` ({criteria.get(c).description})" if c in criteria else f"`{c}` (not registered here)"
                 for c in used]
    return [f"- score criteria: {'; '.join(described)}"] if described else []


def _markdown(rep: Report, spec: dict, all_runs: pd.DataFrame, name: str) -> str:
    lines = [f"# Study report: {name}", "",
             f"- figure: `{rep.kind}` ({PAPER_FIGURE.get(rep.kind, 'no figure')} of the paper, see docs/paper.md); "
             + _scale_text(spec), *_status_lines(all_runs, rep.grid), *_window_lines(all_runs, rep.grid),
             *(f"- {line}" for line in machine_lines(rep.runs)),
             *_criteria_lines(rep.runs), "",
             "## Runs per label", "", _label_table(rep.runs) if len(rep.runs) else "No finished runs.\n",
             "## Claims", "", *(f"- {c}" for c in rep.claims or ["No claim can be tested with these runs."]), "",
             *(f"- {n}" for n in rep.notes), *([""] if rep.notes else []),
             f"{rep.tested} claim tests in this report ({len(rep.claims) - rep.tested} more claims not testable), "
             f"each at α = {ALPHA} without correction for multiple testing; the correlations table below lists "
             f"{len(rep.correlations)} correlations in all (the generalization-measures section, where present, "
             f"has its own p-values).", "",
             "## Correlations", "", _corr_table(rep.correlations) if rep.correlations else "None.\n", *rep.sections,
             "## Figures", "", *(f"![{title.replace(chr(10), ' — ')}]({png.name})\n" for title, png in rep.figures),
             "Tables: `runs.csv`, `epochs.csv`, `events.csv` (and `events_classes.csv` with class detail, "
             "`curvature.csv`, `eps_sweep.csv` with probes, `flatness.csv` from `gst flatness`).", ""]
    return "\n".join(lines)


def varying(runs: pd.DataFrame, keys) -> list[str]:
    """The grid keys whose values differ among ``runs``."""
    return [k for k in keys if k in runs and runs[k].nunique(dropna=False) > 1]


def point_name(keys, values) -> str:
    """``key=value, ...`` of a grid point, values as the study file spells them (``null``, ``1000``)."""
    values = values if isinstance(values, (tuple, list)) else (values,)
    return ", ".join(f"{k}={_value(v)}" for k, v in zip(keys, values))


def grid_labels(runs: pd.DataFrame, keys) -> pd.Series:
    """Labels that also name the grid point (``label (key=value, ...)``) for the grid keys that vary."""
    keys = varying(runs, keys)
    if not keys:
        return runs["label"]
    return runs.apply(lambda r: f"{r['label']} ({point_name(keys, [r[k] for k in keys])})", axis=1)


def _read_spec(study_dir: Path) -> dict:
    """study.yaml as a mapping, verified against study.yaml.sha256 (store.DamagedFileError when it does not
    match: an edited figure or setting would change the report silently); {} (the generic report) when it is
    missing, and with a warning when it is not a YAML mapping."""
    from gstlab import config as C  # noqa: PLC0415
    from gstlab.errors import warn  # noqa: PLC0415

    path = study_dir / "study.yaml"
    if not path.exists():
        return {}
    text, checked = store.read_checked_text(path, f"`gst sweep` with the study's file and --out {study_dir}")
    if not checked:
        warn(f"{path} has no checksum file (written before gstlab checksummed it); used as it is. `gst sweep` on "
             f"the study writes one")
    try:
        return C.yaml_mapping(text, f"study file {path}")
    except C.ConfigError as err:
        warn(f"{err}; drawing the generic report")
        return {}


def _with_relative_run_dirs(runs: pd.DataFrame, out: Path) -> pd.DataFrame:
    """``run_dir`` relative to the report folder, so that runs.csv stays true when study and store move together
    (and names no machine's absolute paths when a report is committed)."""
    if "run_dir" not in runs:
        return runs
    base = out.resolve()
    relative = [os.path.relpath(d, base) if isinstance(d, str) and d else d for d in runs["run_dir"]]
    return runs.assign(run_dir=relative)


def report_runs(path: str | Path) -> pd.DataFrame:
    """The finished runs of a written report, for post-hoc analysis: ``path`` is its runs.csv or the study
    directory."""
    path = Path(path)
    runs = read_report_table(path if path.suffix == ".csv" else path / REPORT_DIR / "runs.csv")
    return runs[runs["status"] == "finished"]


def read_report_table(path: str | Path) -> pd.DataFrame:
    """A table of a written report, verified against its folder's SHA256SUMS (store.DamagedFileError when it
    does not match or is not listed; one warning when the folder has no SHA256SUMS: written before reports
    were checksummed)."""
    from gstlab.errors import warn  # noqa: PLC0415

    path = Path(path)
    sums = path.with_name(SUMS)
    if not sums.exists():
        warn(f"{path.parent} has no {SUMS} (written before gst report checksummed its files); {path.name} used as "
             f"it is")
        return pd.read_csv(path)
    listed = _read_sums(sums)
    if path.name not in listed:
        raise store.DamagedFileError(f"{path}: not in {sums} (added after the report was written); gst report "
                                     f"writes the folder again")
    data = path.read_bytes()  # parsed as hashed: an edit between check and use cannot slip in
    if hashlib.sha256(data).hexdigest() != listed[path.name]:
        raise store.DamagedFileError(f"{path}: does not match {sums} (edited or damaged); gst report on its study "
                                     f"writes it again")
    return pd.read_csv(io.BytesIO(data))


def _read_sums(sums: Path) -> dict[str, str]:
    """``SHA256SUMS`` as {file name: digest}; DamagedFileError when a line is not 'DIGEST  NAME' (sha256sum's)."""
    try:
        return store.parse_sums(sums.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise store.DamagedFileError(f"{sums}: not a SHA256SUMS file (each line 'SHA-256  FILE'); gst report on "
                                     f"its study writes it again") from None


def write_report(study_dir: str | Path) -> Path:
    """Write ``report/`` of a study (tables, the figure's panels, report.md, SHA256SUMS), built in a new folder
    swapped in whole (no file of an earlier report is left beside them); returns the report.md path."""
    study_dir = Path(study_dir)
    spec = _read_spec(study_dir)
    asked = str(spec.get("figure") or "generic")
    kind = asked if asked in BUILDERS else "generic"
    final = study_dir / REPORT_DIR
    all_runs = load_study(study_dir)  # a damaged index is refused before anything is written
    tables = {"epochs": load_epochs(study_dir, all_runs), "events": load_events(study_dir, all_runs),
              "curvature": load_curvature(study_dir, all_runs), "eps_sweep": load_eps(study_dir, all_runs),
              **measures.load_tables(study_dir, all_runs)}
    out = _fresh_dir(study_dir / f".{REPORT_DIR}.new")  # built apart, then swapped in whole
    finished = all_runs["status"] == "finished"
    start = common_window_start(all_runs, finished & pruned(all_runs) & ~scratch(all_runs))
    all_runs = with_window(all_runs, tables["epochs"], start)
    store.atomic_write_text(out / "runs.csv", _with_relative_run_dirs(all_runs, final).to_csv(index=False))
    for key, table in tables.items():
        if key in ("epochs", "events") or len(table):
            store.atomic_write_text(out / f"{key}.csv", table.to_csv(index=False))
    # runs of one setting at two grid points differ: named by the keys that vary in the index, so a point whose
    # runs all failed still makes the others' labels name theirs
    named = all_runs.assign(label=grid_labels(all_runs, spec.get("grid") or {}))
    ok = named[named["status"] == "finished"].reset_index(drop=True)
    labels = dict(zip(ok["run_id"], ok["label"]))
    keep = {k: t[t["run_id"].isin(ok["run_id"])].assign(label=lambda df: df["run_id"].map(labels))
            for k, t in tables.items()}
    rep = Report(kind, out, ok, keep["epochs"], keep["curvature"], keep["eps_sweep"], colors=F.palette(ok["label"]),
                 grid=tuple(spec.get("grid") or ()))
    if len(ok):
        BUILDERS[kind](rep)
        measures.add_to_report(rep, keep["events"], keep["events_classes"],
                               pd.concat([keep["curvature"], keep["flatness"]], ignore_index=True), spec.get("grid"))
    path = out / "report.md"
    text = _markdown(rep, spec, all_runs, str(spec.get("name") or study_dir.name))
    if asked != kind:
        text = text.replace("\n- figure:", f"\n- study.yaml asks for figure `{asked}`, which is not one of "
                            f"{', '.join(KINDS)}: drawing the generic report\n- figure:", 1)
    store.atomic_write_text(path, text)
    write_sums(out)
    _swap_in(out, final)
    return final / path.name


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _swap_in(new: Path, final: Path) -> None:
    """Replace folder ``final`` by ``new`` (two renames): a reader sees the old report whole, none, or the new
    one whole, never files of two reports side by side."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_sums(out: Path) -> None:
    """``SHA256SUMS`` of every file in the report folder (``sha256sum -c SHA256SUMS`` checks them): a report
    folder copied elsewhere (e.g. committed under docs/figures) can be verified before its tables are used."""
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != SUMS and not p.name.startswith("."))
    store.atomic_write_text(out / SUMS, "".join(f"{store.file_digest(p)}  {p.name}\n" for p in files))
