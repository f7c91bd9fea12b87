"""Who pays for a pruning event: per-class test recall before and after it, and prediction flips.

Built from the two evaluations every event already has (``acc_before``, ``acc_after``; see
``runner._after_events``), which return each example's predicted class on event epochs: no extra pass.

- ``events_classes.csv``: per event row (epoch, layer) and class present in the evaluation set: ``count`` (its
  examples), ``recall_before`` / ``recall_after`` (% of them predicted right) and ``flips`` (% of them whose
  predicted class changed across the event, right or wrong). The count-weighted mean of the recalls is the
  event's accuracy; the count-weighted mean of ``flips`` is the event's flips (>= its net accuracy change).
- Per run (``summary.json``), over the pruning epochs (``analysis.summary.pruning_epoch_accuracies``, scratch
  excluded): ``mean_flips`` (%), ``worst_class_drop`` (the largest ``recall_before - recall_after``, points)
  and ``recall_distortion`` (after Good et al., NeurIPS 2022; definition in docs/decisions.md).
"""

from __future__ import annotations

import math

import torch

from gstlab.analysis.summary import pruning_epoch_accuracies

CLASS_COLUMNS = ("epoch", "layer", "class", "count", "recall_before", "recall_after", "flips")


def flips(pred_before: torch.Tensor, pred_after: torch.Tensor) -> float:
    """% of examples whose predicted class differs between the two predictions."""
    return 100.0 * (pred_before != pred_after).float().mean().item() if len(pred_before) else math.nan


def class_table(y: torch.Tensor, pred_before: torch.Tensor, pred_after: torch.Tensor) -> list[dict]:
    """Per class present in ``y``: count, recall before/after (%) and flips (%), one device sync."""
    size = int(torch.stack([y.max(), pred_before.max(), pred_after.max()]).max()) + 1
    stats = torch.stack([
        torch.bincount(y, minlength=size),
        torch.bincount(y, weights=(pred_before == y).double(), minlength=size).long(),
        torch.bincount(y, weights=(pred_after == y).double(), minlength=size).long(),
        torch.bincount(y, weights=(pred_before != pred_after).double(), minlength=size).long(),
    ]).tolist()
    return [{"class": k, "count": n, "recall_before": 100.0 * b / n, "recall_after": 100.0 * a / n,
             "flips": 100.0 * f / n} for k, (n, b, a, f) in enumerate(zip(*stats)) if n > 0]


def event_rows(events: list, y: torch.Tensor, pred_before: torch.Tensor | None,
               pred_after: torch.Tensor | None) -> list[dict]:
    """Rows of ``events_classes.csv`` for one epoch's events (the same table for each layer's row, as the
    accuracies of events.csv); none when the evaluations kept no predictions."""
    if not events or pred_before is None or pred_after is None:
        return []
    table = class_table(y, pred_before, pred_after)
    return [{"epoch": ev.epoch, "layer": ev.layer, **row} for ev in events for row in table]


def _weighted(rows: list[dict], key: str) -> float:
    return sum(r["count"] * float(r[key]) for r in rows) / sum(r["count"] for r in rows)


def distortion_terms(rows: list[dict]) -> list[float]:
    """One event's per-class intensification terms ``s_k * (d_k - 1)``: ``d_k = (r_k' / A') / (r_k / A)`` is
    class k's recall relative to accuracy after the event over the same before, ``s_k`` the sign of
    ``r_k - A`` (classes below accuracy: -1). Classes with ``r_k = 0`` (and events with ``A' = 0``) have no
    ``d_k``. ``s_k`` compares correct counts (r_k = A exactly when c_k N = C n_k), not rounded percentages."""
    acc_before, acc_after = _weighted(rows, "recall_before"), _weighted(rows, "recall_after")
    if acc_after == 0:
        return []
    n_all, c_all = sum(int(r["count"]) for r in rows), sum(_correct(r) for r in rows)
    terms = []
    for r in rows:
        before, after = float(r["recall_before"]), float(r["recall_after"])
        if before > 0:
            ratio = (after / acc_after) / (before / acc_before)
            above, below = _correct(r) * n_all, c_all * int(r["count"])
            sign = (above > below) - (above < below)  # of r_k - A
            terms.append(sign * (ratio - 1.0) if sign else 0.0)
    return terms


def _correct(row: dict) -> int:
    """A class's correct predictions before the event, from its recall (%) and count."""
    return round(float(row["recall_before"]) * int(row["count"]) / 100)


def summarize_classes(rows: list[dict], events: list[dict], scratch: bool) -> dict:
    """``mean_flips``, ``worst_class_drop``, ``recall_distortion`` of a run (NaN when it has no pruning
    epoch with class detail). ``rows``: of events_classes.csv; ``events``: of events.csv."""
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:  # an epoch's table repeats for each layer pruned in it: keep the first layer's
        table = by_epoch.setdefault(int(r["epoch"]), [])
        if not table or table[0]["layer"] == r["layer"]:
            table.append(r)
    tables = [by_epoch[e] for e in pruning_epoch_accuracies(events, scratch) if e in by_epoch]
    if not tables:
        return {"mean_flips": math.nan, "worst_class_drop": math.nan, "recall_distortion": math.nan}
    terms = [t for table in tables for t in distortion_terms(table)]
    return {
        "mean_flips": sum(_weighted(t, "flips") for t in tables) / len(tables),
        "worst_class_drop": max(float(r["recall_before"]) - float(r["recall_after"]) for t in tables for r in t),
        "recall_distortion": sum(terms) / len(terms) if terms else math.nan,
    }
