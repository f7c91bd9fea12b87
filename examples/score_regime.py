"""Score an exploration study by the selection rule of docs/where_pruning_helps.md (after `gst report` on it).

Prints the log row's numbers per method (No Pruning and the study's one Prune_S and one Prune_L label): mean
stability, mean best test accuracy over the common window, mean early-stopping peak, mean memorization at the
common-window best epoch, and criteria (a), (b), (c). (c) reloads each run's final model to check that no class
has zero test recall.

Usage:  python examples/score_regime.py STUDIES/e8
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from gstlab import config as C
from gstlab.analysis.report import report_runs
from gstlab.remeasure import load_model_checkpoint
from gstlab.runner import prepare, run_threads

METHODS = {"NP": "No Pruning", "S13": "Prune_S", "L13": "Prune_L"}  # a study's one label starting with each


def recovered(run_dir: Path, clean: bool) -> tuple[bool, str]:
    """Training accuracy at the end >= the epoch before the last round of events - 1 (clean examples under label
    noise)."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    events = pd.read_csv(run_dir / "events.csv")
    column = "train_acc_clean" if clean and "train_acc_clean" in metrics else "train_acc"
    if not len(events):
        return True, "no events"
    last = last_round(set(events["epoch"].astype(int)))
    before = float(metrics.loc[metrics["epoch"] == last - 1, column].iloc[0]) if last > 0 else 0.0
    end = float(metrics[column].iloc[-1])
    return end >= before - 1.0, f"{column} {before:.2f} before the last round of events (epoch {last}), " \
        f"{end:.2f} at the end"


def last_round(event_epochs: set[int]) -> int:
    """The first epoch of the run's last round of events: layers with staggered starts prune in consecutive epochs
    (e.g. 243-246), and the level "before the last event" is the level before that whole round."""
    epoch = max(event_epochs)
    while epoch - 1 in event_epochs:
        epoch -= 1
    return epoch


def class_recalls(run_dir: Path) -> torch.Tensor:
    """Test recall (%) per class of the run's final model (rebuilt as `gst flatness` rebuilds it)."""
    state = load_model_checkpoint(run_dir, None)
    cfg = C.from_dict(C.RunConfig, state["config"])
    with run_threads(cfg.train), torch.no_grad():  # the run's threads, as gst flatness measures
        run = prepare(cfg, run_dir)
        run.model.load_state_dict(state["model"])
        run.masks.refresh()
        run.model.eval()
        x, y = run.trainer.eval_data
        pred = torch.cat([run.model(x[i:i + 512]).argmax(1) for i in range(0, len(y), 512)])
    return torch.stack([(pred[y == c] == c).float().mean() for c in range(int(y.max()) + 1)]) * 100


def method_label(runs: pd.DataFrame, start: str) -> str:
    """The study's one label that starts with ``start`` (e.g. "Prune_S" -> "Prune_S 13%")."""
    found = sorted({label for label in runs["label"] if label.startswith(start)})
    if len(found) != 1:
        sys.exit(f"expected one label starting with {start!r} in the study, found {found}")
    return found[0]


def main(study: Path) -> None:
    runs = report_runs(study)
    noisy = "window_memorization" in runs and runs["window_memorization"].notna().any()
    means = {}
    labels = {key: method_label(runs, start) for key, start in METHODS.items()}
    for key, label in labels.items():
        g = runs[runs["label"] == label]
        means[key] = g[["mean_stability", "window_best_test_acc", "peak_test_acc", "best_test_acc"]
                       + (["window_memorization"] if noisy else [])].mean()
        print(f"{key} ({label}): n = {len(g)}, " + ", ".join(f"{k} {v:.2f}" for k, v in means[key].items()))
    start = int(runs["window_start"].iloc[0])
    gain = max(means[k]["window_best_test_acc"] - means["NP"]["window_best_test_acc"] for k in ("S13", "L13"))
    separation = means["S13"]["mean_stability"] - means["L13"]["mean_stability"]
    print(f"common window: epochs >= {start}")
    print(f"(a) best pruned - NP over the common window: {gain:+.2f} points -> {'met' if gain >= 1 else 'not met'}")
    print(f"(b) stability S13 - L13: {separation:+.2f} points -> {'met' if separation >= 1 else 'not met'}")
    ok = True
    for _, run in runs[runs["label"].isin(labels.values())].iterrows():
        run_dir = Path(run["run_dir"]) if Path(run["run_dir"]).is_absolute() else study / "report" / run["run_dir"]
        rec, detail = recovered(run_dir, noisy)
        recalls = class_recalls(run_dir)
        fine = rec and bool((recalls > 0).all())
        ok &= fine
        print(f"  {run['label']:12s} seed {run['seed']}: {detail}; min class recall {recalls.min():.1f}% "
              f"{'' if fine else '<- not recovered'}")
    print(f"(c) every run recovers: {'met' if ok else 'not met'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
