"""POST-HOC, descriptive analysis of the confirmatory Figure 2 / Figure 6 studies (written after their reports
were read; not part of the preregistration, no verdict rests on it). Two questions a reviewer asks:

1. Is the Figure 6 flatness correlation carried by pruned vs unpruned runs (different parameter counts)?
   It is recomputed over the pruned runs alone, all of which keep 43.62% of the parameters.
2. Does the "best test accuracy" window favour No Pruning? As in the paper's code, a pruned run's best is
   taken after its last pruning epoch, No Pruning's over all epochs; here every run is also scored over the
   same window (epochs >= the latest last-pruning epoch of the study).

Usage (after `gst report` on both studies):
    python examples/posthoc_fig2_fig6.py STUDIES/confirm_fig2_vgg STUDIES/confirm_fig6
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from gstlab.analysis.report import REPORT_DIR, read_report_table, report_runs
from gstlab.analysis.results import last_probes
from gstlab.analysis.stats import correlation, correlation_line, ttest, ttest_line
from gstlab.analysis.window import common_window_start, with_window

PRUNED = ("Prune_S 1%", "Prune_S 13%", "Prune_R 13%", "Prune_L 13%")
FIGURE2_PANEL = ("Prune_S 1%", "Prune_S 13%", "Prune_L 13%")


def flatness_within_pruned(runs: pd.DataFrame, curvature: pd.DataFrame) -> None:
    data = runs.merge(last_probes(curvature)[["run_id", "eig_sum", "grad_moment_trace"]], on="run_id")
    print(data.groupby("label", sort=False)[["mean_stability", "eig_sum", "grad_moment_trace"]].mean().round(2))
    for y in ("eig_sum", "grad_moment_trace"):
        for labels in (FIGURE2_PANEL, PRUNED):
            group = data[data["label"].isin(labels)]
            print(correlation_line(f"stability vs {y} over {', '.join(labels)}",
                                   correlation(group["mean_stability"], group[y])))
    print(ttest_line("Σ top-20 eigenvalues, Prune_L 13% - Prune_S 13%",
                     ttest(*(data.loc[data["label"] == label, "eig_sum"] for label in ("Prune_L 13%", "Prune_S 13%")))))


def common_window_best(runs: pd.DataFrame, epochs: pd.DataFrame) -> tuple[int, pd.Series]:
    """The first epoch of the common window and each run's best test accuracy in it (indexed by run_id)."""
    start = common_window_start(runs, pd.Series(True, index=runs.index))
    scored = with_window(runs, epochs, start)
    return start, scored.set_index("run_id")["window_best_test_acc"].rename("best_window")


def benefit_in_a_common_window(runs: pd.DataFrame, epochs: pd.DataFrame) -> None:
    start, best = common_window_best(runs, epochs)
    data = runs.merge(best, on="run_id")
    baseline = data.loc[data["label"] == "No Pruning", "best_window"]
    print(f"\nbest test accuracy over epochs >= {start} for every run")
    for label in (*FIGURE2_PANEL, "Scratch Pruning"):
        print(ttest_line(f"{label} - No Pruning", ttest(data.loc[data["label"] == label, "best_window"], baseline)))


def main(fig2: Path, fig6: Path) -> None:
    runs = report_runs(fig2)
    flatness_within_pruned(runs, read_report_table(fig6 / REPORT_DIR / "curvature.csv"))
    benefit_in_a_common_window(runs, read_report_table(fig2 / REPORT_DIR / "epochs.csv"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
