"""POST-HOC, descriptive analysis of the confirmatory Figure 5 study (written after its report was read; not part
of the preregistration, no verdict rests on it). The preregistered descriptive correlation, r(stability, best
test accuracy) over the 70 pruned and noise runs, has the paper's sign; this asks what carries it:

1. the same correlation without the permanent-pruning runs (F5_0, label "Prune_L"), and within zeroing and within
   Gaussian noise alone;
2. permanent pruning (F5_0) against No Noise, the comparison the preregistered tests did not include.

Usage, on a study directory after `gst report` or on the committed table:
    python examples/posthoc_fig5.py STUDIES/confirm_fig5
    python examples/posthoc_fig5.py docs/figures/confirm_fig5/runs.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from gstlab.analysis.report import report_runs
from gstlab.analysis.stats import correlation, correlation_line, ttest, ttest_line

BASELINE, PERMANENT = "No Pruning", "Prune_L"


def subsets(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The groups of finished runs whose stability-accuracy correlation is reported."""
    perturbed = runs[runs["label"] != BASELINE]
    noise = perturbed[perturbed["label"] != PERMANENT]
    return {"pruned and noise runs (preregistered, descriptive)": perturbed,
            "noise runs without permanent pruning": noise,
            "zeroing runs": noise[noise["label"].str.startswith("Zeroing")],
            "Gaussian-noise runs": noise[noise["label"].str.startswith("Gaussian")]}


def main(path: Path) -> None:
    runs = report_runs(path)
    for name, group in subsets(runs).items():
        print(correlation_line(f"stability vs best test accuracy, {name}",
                               correlation(group["mean_stability"], group["best_test_acc"])))
    best = runs.groupby("label")["best_test_acc"]
    print(ttest_line(f"{PERMANENT} (F5_0, permanent, BN unmasked) - No Noise",
                     ttest(best.get_group(PERMANENT), best.get_group(BASELINE))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
