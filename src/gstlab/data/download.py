"""Checksummed downloads and the cache directory (used only when the user asks for ``data.download``)."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from gstlab.store import FILE_MODE, file_digest

CACHE = Path(os.environ.get("GSTLAB_DATA", Path.home() / ".cache" / "gstlab"))


class DataMissingError(RuntimeError):
    """A data set is not on disk; the message says how to get it."""


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def verify(path: Path, md5: str, *, name: str = "", remedy: str = "delete it and retry") -> None:
    """Raise DataMissingError naming ``name`` (default: the path) unless ``path`` has the md5 ``md5``."""
    got = md5sum(path)
    if got != md5:
        raise DataMissingError(f"{name or path}: checksum mismatch (md5 {got}, expected {md5}); {remedy}")


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` to ``dest`` via a temporary file; verify the md5 before the atomic rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.fchmod(fd, FILE_MODE)  # readable as any downloaded file (mkstemp's 0600 would hide it from others)
    os.close(fd)
    try:
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 (fixed https/http dataset URLs)
        verify(Path(tmp), md5, name=url,
               remedy=f"the download was removed; retry, or fetch it by hand into {dest.parent}")
        os.replace(tmp, dest)
    except OSError as err:
        raise DataMissingError(f"could not download {url} ({err}); fetch it by hand into {dest.parent}") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest
