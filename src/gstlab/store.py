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
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gstlab.errors import warn

METRIC_COLUMNS = (
    "epoch", "lr", "train_acc", "train_loss", "test_acc_pre", "test_acc", "test_loss",
    "units_pruned", "units_removed", "wall_s",
)


def metric_columns(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """metrics.csv's columns, with ``extra`` (label noise: clean and noisy training accuracy) before wall_s."""
    return (*METRIC_COLUMNS[:-1], *extra, METRIC_COLUMNS[-1])


EVENT_COLUMNS = (
    "epoch", "layer", "action", "criterion", "side", "units_before", "units_removed", "units_remaining",
    "mean_score", "acc_before", "acc_after", "instability", "duration_batches", "units", "scores",
)
# events.csv headers of runs written before a column existed (read and verified as they are): without the units'
# scores, and without which units an event took (both added 2026-11-28)
LEGACY_EVENT_COLUMNS = (EVENT_COLUMNS[:-1], EVENT_COLUMNS[:-2])
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "gstlab-checkpoint-1"  # the "format" entry of every checkpoint and saved model
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the last good one, kept until a new checkpoint is complete


class OutDirError(OSError):
    """An output directory cannot be created or written (a file in its place, a read-only file system)."""


def check_dir(path: Path, flag: str) -> None:
    """OutDirError naming ``flag`` if ``path`` holds a NUL byte or exists and is not a directory."""
    if "\0" in str(path):  # before anything is made: mkdir would make the parents, then fail (ValueError)
        raise OutDirError(f"{flag} {str(path)!r}: holds a NUL byte, which no directory name can; choose another "
                          f"{flag}")
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{flag} {path}: exists and is not a directory; choose another {flag}")


def make_dir(path: Path, flag: str) -> None:
    """Create directory ``path`` (and parents); OutDirError naming ``flag`` if that is impossible."""
    check_dir(path, flag)
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


def _file_mode() -> int:
    """What open() gives a new file under this process's umask (read once: os.umask can only be read by
    setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
    """Write ``path`` via a temporary file and a rename. ``previous``: first move the old ``path`` there, so
    the last complete version survives until the new one is complete. A directory where the file belongs is
    moved aside (with a warning); an OSError (read-only or full disk) names ``path``."""
    for target in (path, previous):
        if target is not None and target.is_dir() and not target.is_symlink():
            set_aside(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would keep a shared store from its other readers
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_aside(path: Path) -> Path:
    """Move ``path`` (a directory where a file belongs, or a damaged file) to ``<name>.damaged-<n>`` beside it,
    with one warning line; returns the new name. Nothing is deleted."""
    n = 1
    while (aside := path.with_name(f"{path.name}.damaged-{n}")).exists():
        n += 1
    os.replace(path, aside)
    kind = "a directory, not a file" if aside.is_dir() else "damaged"
    warn(f"{path} is {kind}; moved it aside to {aside.name}")
    return aside


def discard(path: Path) -> None:
    """Remove a damaged file (a directory in its place is moved aside instead)."""
    if path.is_dir() and not path.is_symlink():
        set_aside(path)
    else:
        path.unlink(missing_ok=True)


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


class DamagedFileError(Exception):
    """A file that does not match its checksum file; the message names the command that rewrites it."""


def checksum_path(path: Path) -> Path:
    """``NAME.sha256`` beside ``path``, in ``sha256sum`` format (``sha256sum -c NAME.sha256`` checks it too)."""
    return path.with_name(f"{path.name}.sha256")


def write_checked_text(path: Path, text: str) -> None:
    """Write ``path`` and then its checksum file, each atomically (a kill between the two leaves a mismatch,
    which the reader reports; the command that wrote them writes both again)."""
    atomic_write_text(path, text)
    atomic_write_text(checksum_path(path), f"{hashlib.sha256(text.encode()).hexdigest()}  {path.name}\n")


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` output ('DIGEST  NAME' lines; '*NAME' in binary mode) as {name: digest}; ValueError when a
    line is not one, or there is none."""
    listed = {}
    for line in filter(str.strip, text.splitlines()):
        digest, _, name = line.partition(" ")
        name = name.lstrip(" ").removeprefix("*")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise ValueError(f"not a 'SHA-256  FILE' line: {line[:80]!r}")
        listed[name] = digest
    if not listed:
        raise ValueError("no checksum")
    return listed


def read_checked_text(path: Path, rewrite: str) -> tuple[str, bool]:
    """The text of ``path`` and whether its checksum file vouched for it (False: it has none, e.g. it was written
    before gstlab checksummed it). DamagedFileError, naming ``rewrite`` (the command that writes it again), when
    the checksum does not match or the file is not UTF-8 text."""
    data = Path(path).read_bytes()
    checksum = checksum_path(path)
    try:
        recorded = parse_sums(checksum.read_text(encoding="utf-8")).get(path.name, "not listed")
    except FileNotFoundError:
        recorded = None
    except (OSError, UnicodeDecodeError, ValueError):
        recorded = "unreadable"
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise DamagedFileError(f"{path}: does not match {checksum.name} (edited or damaged); {rewrite} writes it "
                               f"again (or delete {checksum.name} to use it as it is)")
    try:
        return data.decode(), recorded is not None
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path}: not UTF-8 text (damaged); {rewrite} writes it again") from None


CHECKSUM = "checksum"  # the entry of a checkpoint that holds state_digest of everything else in it


class ChecksumError(ValueError):
    """A checkpoint whose content does not match its checksum (a flipped bit, an edit)."""


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every key, tensor (dtype, shape, bytes) and plain value, in order.
    It hashes what is loaded, not the file's bytes, so it does not depend on torch's serialization format."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{type(value).__name__}{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r};".encode())

    feed(state)
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict, previous: Path | None = None) -> None:
    """Save ``state`` with its checksum (verified by load_checkpoint), atomically."""
    buf = io.BytesIO()
    torch.save({**state, CHECKSUM: state_digest(state)}, buf)
    atomic_write_bytes(path, buf.getvalue(), previous)


def load_checkpoint(path: Path) -> dict:
    """Load a gstlab checkpoint safely (``weights_only=True``: tensors and plain containers only) and verify its
    checksum (ChecksumError if the content changed since it was saved); see load_verified."""
    return load_verified(path)[0]


def load_verified(path: Path) -> tuple[dict, bool]:
    """(state, verified): ``verified`` is False for a file saved before checkpoints had checksums (loaded as it
    is); ChecksumError when the content does not match the checksum."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ChecksumError(f"not a gstlab checkpoint (a {type(state).__name__})")
    if CHECKSUM not in state:
        return state, False
    expected = state.pop(CHECKSUM)
    if state_digest(state) != expected:
        raise ChecksumError("checksum mismatch: the content changed after it was saved")
    return state, True
