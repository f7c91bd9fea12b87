"""One directory per run: config, manifest, per-epoch metrics, per-event records, summary, checkpoints.

Every file is written atomically (temporary file + rename), so a killed run never leaves a half-written
result. Tables are small and rewritten whole from the rows kept in memory (and in the checkpoint), which
makes resume exact: the rows come back from the checkpoint, not from a possibly newer CSV.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import numbers
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

METRIC_COLUMNS = (
    "epoch", "lr", "train_acc", "train_loss", "test_acc_pre", "test_acc", "test_loss",
    "units_pruned", "units_removed", "wall_s",
)
EVENT_COLUMNS = (
    "epoch", "layer", "action", "criterion", "side", "units_before", "units_removed", "units_remaining",
    "mean_score", "acc_before", "acc_after", "instability", "duration_batches",
)
CHECKPOINT = "checkpoint.pt"


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``directory`` (a sibling ``.<name>.lock`` file), held until exit: two
    processes that would execute the same run (e.g. two studies sharing a store) take turns."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def csv_text(rows: list[dict], columns: tuple[str, ...] | list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy scalars too
        return repr(float(value))  # round-trips exactly
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return " ".join(repr(float(v)) for v in value)
    return "" if value is None else value


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | list[str]) -> None:
    atomic_write_text(path, csv_text(rows, columns))


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load a gstlab checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)
