"""One directory per run: config, manifest, per-epoch metrics, per-event records, summary, checkpoints.

Every file is written atomically (temporary file + rename), so a killed run never leaves a half-written
result. Tables are small and rewritten whole from the rows kept in memory (and in the checkpoint), which
makes resume exact: the rows come back from the checkpoint, not from a possibly newer CSV.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
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
CHECKPOINT_FORMAT = "gstlab-checkpoint-1"  # the "format" entry of every checkpoint and saved model
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the last good one, kept until a new checkpoint is complete


class OutDirError(OSError):
    """An output directory cannot be created or written (a file in its place, a read-only file system)."""


def make_dir(path: Path, flag: str) -> None:
    """Create directory ``path`` (and parents); OutDirError naming ``flag`` if that is impossible."""
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{flag} {path}: exists and is not a directory; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutDirError(f"{flag} {path}: cannot create the directory ({err.strerror})") from None
    if not os.access(path, os.W_OK):  # also false on a read-only file system, even for root
        raise OutDirError(f"{flag} {path}: the directory is not writable")


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``directory`` (a sibling ``.<name>.lock`` file), held until exit: two
    processes that would execute the same run (e.g. two studies sharing a store) take turns."""
    make_dir(directory.parent, "directory")
    lock = directory.parent / f".{directory.name}.lock"
    try:
        handle = open(lock, "a")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise OutDirError(f"{directory}: cannot create its lock file {lock} ({err.strerror})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


TMP_SUFFIX = ".tmp"  # atomic writes go through ``.<name>.<random>.tmp``; a kill can leave one behind


def atomic_write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
    """Write ``path`` via a temporary file and a rename. ``previous``: first move the old ``path`` there, so
    the last complete version survives until the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: NaN and infinities are written as null (bare NaN is not JSON)."""
    text = json.dumps(_finite(data), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json_or_none(path: Path) -> dict | None:
    """The JSON object in ``path``; None if it is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_bytes().decode())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``algorithm``: any hashlib name), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def leftovers(directory: Path) -> list[Path]:
    """Temporary files of atomic writes that a kill left behind in ``directory``."""
    return sorted(p for p in directory.glob(f".*{TMP_SUFFIX}") if p.is_file())


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


def save_checkpoint(path: Path, state: dict, previous: Path | None = None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), previous)


def load_checkpoint(path: Path) -> dict:
    """Load a gstlab checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)
