"""Scoring every run of a study over one common window of epochs.

The paper's best test accuracy is taken from a run's *own* last pruning epoch on, so an unpruned run is scored
over all its epochs. Where test accuracy peaks early and then falls (label noise: the network memorizes the
noisy labels), that compares No Pruning's early peak with the pruned runs' late window. The common window
starts at the study's last pruning epoch (the latest over its pruned, non-scratch runs) and scores every run,
No Pruning included, over the same epochs. The early-stopping peak (``peak_test_acc``, all epochs) stays a
separate number in ``summary.json``.
"""

from __future__ import annotations

import math

import pandas as pd

WINDOW_COLUMNS = ("window_start", "window_best_test_acc", "window_best_epoch", "window_gap", "window_memorization")


def common_window_start(runs: pd.DataFrame, pruned: pd.Series) -> int:
    """The latest ``last_pruned_epoch`` among the runs selected by ``pruned`` (0 when none prunes)."""
    last = pd.to_numeric(runs.loc[pruned, "last_pruned_epoch"], errors="coerce").dropna()
    return int(last.max()) if len(last) else 0


def with_window(runs: pd.DataFrame, epochs: pd.DataFrame, start: int) -> pd.DataFrame:
    """``runs`` with each run's best test accuracy over epochs ``>= start`` (first epoch reaching it), that
    epoch, the train - test gap there and, under label noise, the memorization there (``train_acc_noisy``);
    NaN for a run without epochs in the window, or without the column."""
    scored = []
    window = epochs[pd.to_numeric(epochs["epoch"]) >= start] if len(epochs) else epochs
    for run_id, rows in window.groupby("run_id", sort=False):
        best = rows.loc[pd.to_numeric(rows["test_acc"]).idxmax()]  # idxmax keeps the first maximum
        scored.append({"run_id": run_id, "window_start": start, "window_best_test_acc": float(best["test_acc"]),
                       "window_best_epoch": int(best["epoch"]),
                       "window_gap": _value(best, "train_acc") - float(best["test_acc"]),
                       "window_memorization": _value(best, "train_acc_noisy")})
    table = pd.DataFrame(scored, columns=["run_id", *WINDOW_COLUMNS])
    return runs.drop(columns=[c for c in WINDOW_COLUMNS if c in runs]).merge(table, on="run_id", how="left")


def _value(row: pd.Series, column: str) -> float:
    return float(row[column]) if column in row and pd.notna(row[column]) else math.nan
