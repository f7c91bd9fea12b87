"""A run's summary from its per-epoch metrics and per-event records (docs/paper.md#definitions, exactly).

- instability of an event epoch: ``(acc_before - acc_after) / acc_before`` (relative, a fraction; it can be
  negative), both accuracies measured in eval mode on the same evaluation set with no training in between;
- stability: ``100 * (1 - instability)`` in %;
- pruning epoch: an epoch with at least one unit removed (or targeted, for interventions); the scratch
  event at epoch 0 does not count;
- mean stability: unweighted mean of stability over the pruning epochs; 100 when there are none;
- post-pruning phase: epochs ``>= last_pruned_epoch`` (0 when never pruned or only at scratch);
- best test accuracy: max ``test_acc`` over the post-pruning phase (first epoch reaching it);
- generalization gap: ``train_acc - test_acc`` at that epoch;
- peak test accuracy: max ``test_acc`` over *all* epochs (first epoch reaching it): the early-stopping
  baseline, which under label noise can lie long before the post-pruning phase;
- memorization (label noise only): ``train_acc_noisy`` at the best epoch, the share (%) of noisy training
  examples predicted as their given, wrong label during that epoch's training pass.
"""

from __future__ import annotations

import math


def instability(acc_before: float, acc_after: float) -> float:
    """Relative drop in accuracy; NaN when the accuracy before is 0."""
    return (acc_before - acc_after) / acc_before if acc_before else math.nan


def pruning_epoch_accuracies(events: list[dict], scratch: bool) -> dict[int, tuple[float, float]]:
    """epoch -> (acc_before, acc_after) for every pruning epoch (units removed > 0; scratch excluded)."""
    out: dict[int, tuple[float, float]] = {}
    for ev in events:
        if int(ev["units_removed"]) <= 0 or (scratch and int(ev["epoch"]) == 0):
            continue
        out[int(ev["epoch"])] = (float(ev["acc_before"]), float(ev["acc_after"]))
    return out


def mean_stability(events: list[dict], scratch: bool) -> float:
    epochs = pruning_epoch_accuracies(events, scratch)
    if not epochs:
        return 100.0
    return sum(100.0 * (1.0 - instability(b, a)) for b, a in epochs.values()) / len(epochs)


def summarize(metrics: list[dict], events: list[dict], scratch: bool) -> dict:
    """Summary statistics of a run (``metrics``: rows of metrics.csv, ``events``: rows of events.csv)."""
    if not metrics:
        return {"mean_stability": math.nan, "best_test_acc": math.nan, "best_epoch": None,
                "final_test_acc": math.nan, "generalization_gap": math.nan, "n_events": 0,
                "n_prune_epochs": 0, "last_pruned_epoch": 0, "epochs_done": 0,
                "peak_test_acc": math.nan, "peak_epoch": None}
    pruned = pruning_epoch_accuracies(events, scratch)
    last = max(pruned) if pruned else 0
    phase = [row for row in metrics if int(row["epoch"]) >= last] or metrics
    best = max(phase, key=lambda row: float(row["test_acc"]))  # max() keeps the first maximum
    peak = max(metrics, key=lambda row: float(row["test_acc"]))
    noise = {"memorization": float(best["train_acc_noisy"])} if "train_acc_noisy" in best else {}
    return {
        "mean_stability": mean_stability(events, scratch),
        "best_test_acc": float(best["test_acc"]),
        "best_epoch": int(best["epoch"]),
        "final_test_acc": float(metrics[-1]["test_acc"]),
        "generalization_gap": float(best["train_acc"]) - float(best["test_acc"]),
        "n_events": sum(1 for ev in events if int(ev["units_removed"]) > 0),
        "n_prune_epochs": len(pruned),
        "last_pruned_epoch": last,
        "epochs_done": len(metrics),
        "peak_test_acc": float(peak["test_acc"]),
        "peak_epoch": int(peak["epoch"]),
        **noise,
    }
