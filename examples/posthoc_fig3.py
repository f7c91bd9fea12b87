"""POST-HOC, descriptive analysis of the confirmatory Figure 3 study (written after its report was read; not part
of the preregistration, no verdict rests on it). T11 (pooled stability vs best test accuracy) came out flat and
T12 (stability vs gap) nominally positive; this asks what a few unusual runs contribute:

1. both pooled correlations without the runs whose training accuracy at their best epoch was below
   ``SATURATED`` % (a run that never recovered from its last pruning events, and runs whose best test accuracy
   came a few epochs after their early events at epochs 3-6, before the training set was fit);
2. Prune_L against Prune_S over all rates (best test accuracy), the side comparison Figure 3's first panel draws,
   with and without those runs.

Usage, on a study directory after `gst report` or on the committed table:
    python examples/posthoc_fig3.py STUDIES/confirm_fig3
    python examples/posthoc_fig3.py docs/figures/confirm_fig3/runs.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from gstlab.analysis.report import report_runs
from gstlab.analysis.stats import correlation, correlation_line, ttest, ttest_line

SATURATED = 99.5  # % training accuracy at the best epoch


def train_acc_at_best(runs: pd.DataFrame) -> pd.Series:
    """Training accuracy at each run's best epoch: the gap is train minus test accuracy there."""
    return runs["best_test_acc"] + runs["generalization_gap"]


def subsets(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All runs (T11/T12's set) and those that had fit their training set at their best epoch."""
    fit = runs[train_acc_at_best(runs) >= SATURATED]
    return {"all runs (T11, T12)": runs, f"runs with training accuracy >= {SATURATED}% at their best epoch": fit}


def main(path: Path) -> None:
    runs = report_runs(path)
    train = train_acc_at_best(runs)
    for i in runs.index[train < SATURATED]:
        r = runs.loc[i]
        print(f"not fit at its best epoch: {r['label']} seed {r['seed']}, best epoch {r['best_epoch']}, "
              f"train {train[i]:.2f}%, test {r['best_test_acc']:.2f}%")
    for name, group in subsets(runs).items():
        for y in ("best_test_acc", "generalization_gap"):
            print(correlation_line(f"stability vs {y}, {name}", correlation(group["mean_stability"], group[y])))
        best = group.groupby("side")["best_test_acc"]
        print(ttest_line(f"Prune_L - Prune_S, best test accuracy over all rates, {name}",
                         ttest(best.get_group("largest"), best.get_group("smallest"))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
