"""The preregistered tests T1-T14 of a confirmatory set of studies (Figures 2, 6, 5 and 3), recomputed from the
tables their reports write (``runs.csv``; ``curvature.csv`` for Figure 6), and the verdict table of one or more
regimes side by side. The README's verdict tables give these numbers, so a committed report folder re-derives them.

The definitions are the preregistered ones (examples/confirm_*.yaml, examples/confirm2_*.yaml):
T1/T2 r(mean stability, best test accuracy / gap) over the Figure 2 pruned runs without Prune_R and scratch;
T3 Prune_L 13% beats No Pruning; T4 r(mean stability, Σ top-k Hessian eigenvalues at the last probe) over every
Figure 6 run; T5-T10 each Figure 5 noise variant beats No Noise; T11/T12 as T1/T2 pooled over every Figure 3
run. Where the runs record memorization (label noise), T13 r(mean stability, memorization) over T1's runs and
T14 No Pruning memorizes more than Prune_L 13% (both at the common-window best epoch) join them, as issue 21
defines them for a label-noise regime; neither confirmation so far has label noise, so neither preregisters
them, and they are absent from both tables. A benefit test is either the Student t-test on each
run's best test accuracy from its own last pruning epoch on (the first confirmation) or the paired t-test over
seeds on the best test accuracy over the common window (the second one's primary); a regime names which is
primary, and the other is computed too, as its secondary.

Input that would give a number the preregistration does not define is refused (ValueError naming the test):
two settings where a test compares one, a seed twice or a run without a seed in a compared setting, a
primary test's column missing, compared runs scored over different windows, Figure 6 probes at different
epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gstlab.analysis.report import ALPHA, intervention, pruned, random_side, read_report_table, report_runs, scratch
from gstlab.analysis.results import last_probes
from gstlab.analysis.stats import correlation, paired_ttest, ttest
from gstlab.analysis.text import interval, number, pvalue
from gstlab.experiments.presets import PRESETS

STUDENT, PAIRED = "student", "paired"  # the two versions of a benefit test


@dataclass(frozen=True)
class Verdict:
    """One preregistered test: ``estimate`` is Pearson r or a difference of means in points (A - B)."""

    test: str  # "T1", ...
    claim: str
    expected: int  # the sign the claim predicts for ``estimate``
    estimate: float
    ci: tuple[float, float]
    p: float
    n: str
    method: str  # "Pearson r", "Student t, own window", "paired t, common window", ...
    primary: bool = True
    kendall: tuple[float, float] | None = None  # (tau, p) beside a Pearson r, descriptive
    cohens_d: float = math.nan  # beside a difference: d (Student) or d_z (paired), descriptive
    means: tuple[float, float] = (math.nan, math.nan)  # of A and B (over the pairs, for a paired test)

    @property
    def reproduced(self) -> bool:
        return math.isfinite(self.estimate) and self.estimate * self.expected > 0 and self.p < ALPHA

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.p):
            return "not testable"
        return "reproduced" if self.reproduced else "not reproduced"

    def effect(self) -> str:
        """The estimate with its 95% CI, the test, p and n, e.g. ``r = +0.18 [-0.20, 0.50], p = 0.351 (Kendall τ =
        +0.29, p = 0.0244), n = 30``; a difference also with Cohen's d (d_z when paired) and the two means."""
        if not math.isfinite(self.estimate):
            return f"n/a, n = {self.n}"
        if self.method == "Pearson r":
            tau = f" (Kendall τ = {self.kendall[0]:+.2f}, p = {pvalue(self.kendall[1])})" if self.kendall else ""
            return f"r = {self.estimate:+.2f} {interval(*self.ci)}, p = {pvalue(self.p)}{tau}, n = {self.n}"
        d = "d_z" if self.method.startswith("paired") else "d"
        return (f"{self.estimate:+.2f} points {interval(*self.ci)}, {self.method}, p = {pvalue(self.p)}, "
                f"{d} = {self.cohens_d:+.2f}, means {self.means[0]:.2f} vs {self.means[1]:.2f}, n = {self.n}")


@dataclass(frozen=True)
class Regime:
    """A confirmatory set of report folders (each with the runs.csv ``gst report`` writes) and which version of
    the benefit tests its preregistration names primary."""

    name: str
    fig2: Path
    fig6: Path  # its curvature.csv (the runs are Figure 2's)
    fig5: Path
    fig3: Path
    primary: str = STUDENT

    @classmethod
    def from_prefix(cls, name: str, prefix: str | Path, primary: str = STUDENT) -> Regime:
        """The folders ``PREFIX_fig2_vgg``, ``PREFIX_fig6``, ``PREFIX_fig5``, ``PREFIX_fig3`` (as in docs/figures)."""
        if primary not in (STUDENT, PAIRED):
            raise ValueError(f"primary: {primary!r}; allowed: {STUDENT!r}, {PAIRED!r}")
        p = Path(prefix)
        return cls(name, *(p.with_name(f"{p.name}_{fig}") for fig in ("fig2_vgg", "fig6", "fig5", "fig3")),
                   primary=primary)


def _runs(folder: Path) -> pd.DataFrame:
    return report_runs(folder / "runs.csv").reset_index(drop=True)


def correlation_test(test: str, claim: str, runs: pd.DataFrame, x: str, y: str, expected: int) -> Verdict:
    c = correlation(runs[x], runs[y], kendall_ci=False) if x in runs and y in runs else correlation([], [])
    return Verdict(test, claim, expected, c["pearson_r"], (c["pearson_ci_low"], c["pearson_ci_high"]),
                   c["pearson_p"], f"{c['n']}", "Pearson r", kendall=(c["kendall_tau"], c["kendall_p"]))


def benefit_test(test: str, claim: str, a: pd.DataFrame, b: pd.DataFrame, version: str, primary: bool,
                 column: str | None = None) -> Verdict:
    """``a`` reaches a higher value than ``b``: Student t on each run's best test accuracy from its own last
    pruning epoch on, or paired t over seeds on the common-window best (``column`` overrides either)."""
    for group in (a, b):
        _one_run_per_seed(test, group)
    col = _column(version, column)
    if version == PAIRED:
        by_seed = [g.set_index("seed")[col] if col in g else pd.Series(dtype=float) for g in (a, b)]
        t = paired_ttest(*by_seed)
        n, method = f"{t['n_a']} pairs", f"paired t, common window{_window(test, a, b)}"
    else:
        t = ttest(*(g[col] if col in g else [] for g in (a, b)))
        n, method = f"{t['n_a']} vs {t['n_b']}", f"Student t, {'common' if column else 'own'} window"
    return Verdict(test, claim, 1, t["diff"], (t["diff_ci_low"], t["diff_ci_high"]), t["p"], n, method, primary,
                   cohens_d=t["cohens_d"], means=(t["mean_a"], t["mean_b"]))


def _one_run_per_seed(test: str, runs: pd.DataFrame) -> None:
    """A benefit test compares one run per seed of each setting (seeds pair the runs of a paired test)."""
    if "seed" not in runs or not len(runs):
        return
    what = f"{test}: {_label(runs, 'a compared setting')}"
    seeds = pd.to_numeric(runs["seed"], errors="coerce")
    if seeds.isna().any():
        raise ValueError(f"{what} has a run without a seed in runs.csv; each run needs its seed")
    repeated = list(dict.fromkeys(seeds[seeds.duplicated()].astype(int)))
    if repeated:
        raise ValueError(f"{what} has seed(s) {', '.join(map(str, repeated))} more than once; one run per seed "
                         f"is compared")


def _window(test: str, a: pd.DataFrame, b: pd.DataFrame) -> str:
    """' (epochs ≥ N)', the common window both sides were scored over ('' where runs.csv does not say)."""
    both = pd.concat([a, b])
    starts = sorted(set(pd.to_numeric(both["window_start"], errors="coerce").dropna().astype(int))) if (
        "window_start" in both) else []
    if len(starts) > 1:
        raise ValueError(f"{test}: the compared runs were scored over different windows (epochs from "
                         f"{', '.join(map(str, starts))}); a paired test compares one common window")
    return f" (epochs ≥ {starts[0]})" if starts else ""


def _benefits(test: str, claim: str, a: pd.DataFrame, b: pd.DataFrame, primary: str,
              column: str | None = None) -> list[Verdict]:
    """The primary version of a benefit test, then the other one (secondary) where the runs record what it
    needs (a runs.csv written before the common window was added has no ``window_*`` columns)."""
    other = PAIRED if primary == STUDENT else STUDENT
    own = _column(primary, column)
    if own not in a or own not in b:
        raise ValueError(f"{test}: its primary ({primary}) test reads {own}, which runs.csv does not have (a report "
                         f"written before the common window was added: run `gst report` on the study again)")
    tests = [benefit_test(test, claim, a, b, primary, True, column)]
    needs = _column(other, column)
    if needs in a and needs in b:
        tests.append(benefit_test(test, claim, a, b, other, False, column))
    return tests


def _column(version: str, column: str | None) -> str:
    return column or ("window_best_test_acc" if version == PAIRED else "best_test_acc")


def _one_setting(runs: pd.DataFrame, what: str, tests: str) -> None:
    labels = list(dict.fromkeys(runs["label"])) if "label" in runs else []
    if len(labels) > 1:  # pooled, a seed would have two runs
        raise ValueError(f"{tests} compare one {what}; these runs have {len(labels)}: {', '.join(map(str, labels))}")


def figure2_tests(runs: pd.DataFrame, primary: str) -> list[Verdict]:
    """T1-T3 and, where the runs record memorization (label noise), T13-T14."""
    panel = runs[pruned(runs) & ~scratch(runs) & ~random_side(runs)]
    largest = runs[(runs["side"] == "largest") & ~scratch(runs) & (intervention(runs) == "")]
    baseline = runs[~pruned(runs)]
    for group, what in ((largest, "Prune_L (largest-score) setting"), (baseline, "unpruned setting")):
        _one_setting(group, what, "Figure 2 verdicts: T3 and T14")
    name = _label(largest, PRESETS["F2_VGG_4"].label)  # the claim stays the preregistered one without runs
    tests = [correlation_test("T1", "less stable pruning → higher best test accuracy", panel,
                              "mean_stability", "best_test_acc", -1),
             correlation_test("T2", "less stable pruning → smaller generalization gap", panel,
                              "mean_stability", "generalization_gap", 1),
             *_benefits("T3", f"{name} beats No Pruning", largest, baseline, primary)]
    if "window_memorization" in runs and runs["window_memorization"].notna().any():
        tests.append(correlation_test("T13", "less stable pruning → fewer noisy labels memorized", panel,
                                      "mean_stability", "window_memorization", 1))
        tests += _benefits("T14", f"{name} memorizes fewer noisy labels than No Pruning", baseline, largest,
                           primary, column="window_memorization")
    return tests


def _label(runs: pd.DataFrame, default: str) -> str:
    labels = runs["label"].unique() if "label" in runs else []
    return str(labels[0]) if len(labels) == 1 else default


def figure6_test(runs: pd.DataFrame, curvature: pd.DataFrame) -> Verdict:
    probes = last_probes(curvature)[["run_id", "epoch", "eig_sum"]] if len(curvature) else pd.DataFrame(
        columns=["run_id", "epoch", "eig_sum"])
    probes = probes[probes["run_id"].isin(runs["run_id"])]
    epochs = sorted(set(pd.to_numeric(probes["epoch"]).astype(int)))
    if len(epochs) > 1:
        raise ValueError(f"T4: the runs' last flatness probes lie at different epochs ({', '.join(map(str, epochs))}); "
                         f"the test compares every run at one epoch")
    return correlation_test("T4", "less stable pruning → flatter model (Σ top Hessian eigenvalues)",
                            runs.merge(probes, on="run_id", how="inner"), "mean_stability", "eig_sum", 1)


FIGURE5_TESTS = {f"F5_{i}": f"T{4 + i}" for i in range(1, 7)}  # Zeroing 1, 50, 1105, Gaussian 1, 50, 1105


def figure5_tests(runs: pd.DataFrame, primary: str) -> list[Verdict]:
    """T5-T10: each noise variant, by its preset (``setting``: F5_1..F5_6), against No Noise. A variant with no
    finished run is "not testable" under its own number: the others keep theirs, whatever the row order."""
    baseline = runs[~pruned(runs)]
    _one_setting(baseline, "unpruned setting", "Figure 5 verdicts: T5-T10")
    tests = []
    for setting, test in FIGURE5_TESTS.items():
        group = runs[(runs["setting"] == setting) & (intervention(runs) != "")]
        tests += _benefits(test, f"{PRESETS[setting].label} beats No Noise", group, baseline, primary)
    return tests


def figure3_tests(runs: pd.DataFrame) -> list[Verdict]:
    every = runs[pruned(runs) & ~scratch(runs)]  # as the report's Figure 3: scratch has no iterative rate
    return [correlation_test("T11", "pooled over rates and sides: less stable → higher best test accuracy", every,
                             "mean_stability", "best_test_acc", -1),
            correlation_test("T12", "pooled over rates and sides: less stable → smaller gap", every,
                             "mean_stability", "generalization_gap", 1)]


def regime_tests(regime: Regime) -> list[Verdict]:
    """Every preregistered test of ``regime``, primary and secondary versions, in test order."""
    fig2 = _runs(regime.fig2)
    curvature = read_report_table(regime.fig6 / "curvature.csv")
    tests = [*figure2_tests(fig2, regime.primary), figure6_test(fig2, curvature),
             *figure5_tests(_runs(regime.fig5), regime.primary), *figure3_tests(_runs(regime.fig3))]
    return sorted(tests, key=lambda v: _order(v.test, v.primary))


def _order(test: str, primary: bool) -> tuple[int, bool]:
    """T1 before T2 ... T10, and a test's primary version before its secondary one."""
    return int(test[1:]), not primary


def verdict_table(results: list[tuple[Regime, list[Verdict]]]) -> str:
    """Markdown: one row per test (secondary versions as their own rows), one verdict column per regime."""
    keys = sorted({(v.test, v.primary) for _, tests in results for v in tests}, key=lambda k: _order(*k))
    head = ("| test | claim | " + " | ".join(f"{r.name}" for r, _ in results) + " |\n"
            + "|---|---|" + "---|" * len(results) + "\n")
    rows = []
    for test, primary in keys:
        found = [next((v for v in tests if (v.test, v.primary) == (test, primary)), None) for _, tests in results]
        claims = {v.claim for v in found if v is not None}
        if len(claims) > 1:
            raise ValueError(f"{test}: the regimes test different claims ({' / '.join(sorted(claims))}); one row "
                             f"cannot hold them")
        claim = claims.pop()
        expected = next(f"expected {'+' if v.expected > 0 else '−'}" for v in found if v is not None)
        cells = [_cell(v) for v in found]
        rows.append(f"| {test}{'' if primary else ' (secondary)'} | {claim} ({expected}) | {' | '.join(cells)} |")
    summary = " | ".join(f"{sum(v.reproduced for v in tests if v.primary)} of "
                         f"{sum(v.primary for v in tests)} primary tests reproduced" for _, tests in results)
    return head + "\n".join(rows) + f"\n| | | {summary} |\n"


def _cell(v: Verdict | None) -> str:
    if v is None:
        return "not in this regime"
    verdict = f"**{v.verdict}**" if v.primary else v.verdict
    return f"{verdict}: {v.effect()}"


def summary_line(tests: list[Verdict]) -> str:
    primary = [v for v in tests if v.primary]
    return (f"{sum(v.reproduced for v in primary)} of {len(primary)} primary tests reproduced at p < {ALPHA} "
            f"(no correction; Bonferroni would ask p < {number(ALPHA / len(primary), 4)})" if primary else "")
