"""Metric sinks: where a run's numbers go as it trains.

``metrics.csv`` and ``events.csv`` are always written (from the run's tables, at every checkpoint): they are the
run's record, which summaries, reports and resume read. A sink mirrors the same rows elsewhere, epoch by epoch.
:class:`TensorBoardSink` (``train.tensorboard: true``, ``gst run --tensorboard``; needs
``pip install 'gstlab[tensorboard]'``) writes TensorBoard event files under ``RUN_DIR/tensorboard``:

- per epoch, step = the 0-based epoch: ``train/acc``, ``train/loss``, ``test/acc``, ``test/loss``,
  ``test/acc_before_event``, ``lr``, ``units/pruned``, ``units/removed``, ``time/epoch_s`` (and any further
  ``metrics.csv`` column, e.g. label noise's, as ``metrics/<column>``);
- per event: ``instability/<layer>`` (a fraction, as ``events.csv``);
- at the end: ``summary/<key>`` for every number of ``summary.json`` (at the last epoch) and the summary as text.

A resumed run reopens the directory with ``purge_step`` = the first epoch it trains again: TensorBoard's readers
then drop what a killed run wrote after its last checkpoint, so every epoch appears once. :func:`export_run`
writes the same event files from a finished run's CSV files (``gst sweep --tensorboard`` uses it).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gstlab.config import ConfigError, RunConfig

TENSORBOARD_DIR = "tensorboard"  # a run's event files, inside its directory
TAGS = {"train_acc": "train/acc", "train_loss": "train/loss", "test_acc": "test/acc", "test_loss": "test/loss",
        "test_acc_pre": "test/acc_before_event", "lr": "lr", "units_pruned": "units/pruned",
        "units_removed": "units/removed", "wall_s": "time/epoch_s"}


class MetricSink(Protocol):
    def epoch(self, metrics: dict, events: Sequence[dict]) -> None:
        """One epoch's ``metrics.csv`` row and its ``events.csv`` rows (maybe none)."""

    def close(self, summary: dict) -> None:
        """The run ended with ``summary`` (the content of ``summary.json``)."""


def require_tensorboard(asked_by: str = "train.tensorboard") -> None:
    """ConfigError (exit 2, before anything is written) when TensorBoard is not installed; ``asked_by``: the
    flag or field that asks for it."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(f"{asked_by}: needs TensorBoard: pip install 'gstlab[tensorboard]'") from None


def open_sinks(cfg: RunConfig, out: Path, first_epoch: int) -> list[MetricSink]:
    """The run's sinks besides its CSV files; ``first_epoch``: the epoch it trains next (> 0 when resumed)."""
    return [TensorBoardSink(out / TENSORBOARD_DIR, first_epoch)] if cfg.train.tensorboard else []


class TensorBoardSink:
    """TensorBoard event files in ``log_dir``; each epoch is flushed, so a live TensorBoard follows the run."""

    def __init__(self, log_dir: Path, first_epoch: int = 0) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        # a run that trains from first_epoch again (resumed, or restarted from 0 over an earlier attempt's
        # events) drops the steps from there on, so each epoch is written once
        self.writer = SummaryWriter(str(log_dir), purge_step=first_epoch if first_epoch or has_events(log_dir)
                                    else None)
        self.last_epoch = first_epoch - 1

    def epoch(self, metrics: dict, events: Sequence[dict]) -> None:
        step = int(metrics["epoch"])
        for column, value in metrics.items():
            if column != "epoch" and (number := _number(value)) is not None:
                self.writer.add_scalar(TAGS.get(column, f"metrics/{column}"), number, step)
        for ev in events:
            if (number := _number(ev.get("instability"))) is not None:
                self.writer.add_scalar(f"instability/{ev['layer']}", number, step)
        self.writer.flush()
        self.last_epoch = step

    def close(self, summary: dict) -> None:
        for key, value in summary.items():  # NaN (JSON null in summary.json) is left out, as export_run does
            if (number := _number(value)) is not None and not math.isnan(number):
                self.writer.add_scalar(f"summary/{key}", number, max(self.last_epoch, 0))
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=1, default=str) + "\n```",
                             max(self.last_epoch, 0))
        self.writer.close()


def _number(value) -> float | None:
    """The float of a number or of numeric CSV text (NaN included); None for anything else (bools included)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def has_events(log_dir: Path) -> bool:
    return log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))


def export_missing(run_dir: Path, log_dir: Path | None = None) -> None:
    """Event files for the ended run in ``run_dir`` where ``log_dir`` (default: ``RUN_DIR/tensorboard``, where
    its ``train.tensorboard`` asks for them) has none: a run that ended without TensorBoard, or found finished."""
    log_dir = log_dir or run_dir / TENSORBOARD_DIR
    if not has_events(log_dir):
        export_run(run_dir, log_dir)


def export_run(run_dir: Path, log_dir: Path) -> bool:
    """Write TensorBoard event files for the finished run in ``run_dir`` from its CSV files and summary.json,
    as the run would have written them live. False (nothing written) when it has no metrics.csv."""
    metrics = _rows(run_dir / "metrics.csv")
    if not metrics:
        return False
    by_epoch: dict[int, list[dict]] = {}
    for ev in _rows(run_dir / "events.csv"):
        by_epoch.setdefault(int(ev["epoch"]), []).append(ev)
    partial = log_dir.with_name(f".{log_dir.name}.partial")  # renamed into place whole: never half an export
    shutil.rmtree(partial, ignore_errors=True)
    sink = TensorBoardSink(partial)
    for row in metrics:
        sink.epoch(row, by_epoch.get(int(row["epoch"]), []))
    summary_path = run_dir / "summary.json"
    sink.close(json.loads(summary_path.read_text()) if summary_path.exists() else {})
    shutil.rmtree(log_dir, ignore_errors=True)
    partial.rename(log_dir)
    return True
