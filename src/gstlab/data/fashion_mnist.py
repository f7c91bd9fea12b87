"""Fashion-MNIST from the official IDX files (Debian's dataset-fashion-mnist, a directory, or a download)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from gstlab.data.download import CACHE, DataMissingError, download
from gstlab.data.tensor_data import Images

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # official archive md5 sums, checked on download (Debian recompresses: every copy is checked by CONTENT)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA-256 of each file's IDX content (decompressed: any gzip of the official files, Debian's too, has these; the
# same digests are published alongside other Fashion-MNIST loaders): the run id names the data set, not its bytes
CONTENT = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MEAN, STD = 0.2860, 0.3530  # over the 60,000 training images (pixel values in [0, 1])


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or raw): magic 0x0000080D (uint8, D dims), big-endian dimension sizes."""
    return parse_idx(idx_bytes(path), path)


def idx_bytes(path: Path) -> bytes:
    """The IDX content of ``path``, decompressed when it is gzip (``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def parse_idx(data: bytes, path: Path) -> np.ndarray:
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def find_dir(root: str | None, download_ok: bool) -> Path:
    candidates = [Path(root)] if root else [DEBIAN_DIR, CACHE / "fashion_mnist"]
    for d in candidates:
        if all((d / name).exists() or (d / name[:-3]).exists() for name in FILES):
            return d
    if download_ok:
        target = Path(root) if root else CACHE / "fashion_mnist"
        for name, md5 in FILES.items():
            if not (target / name).exists():
                download(URL + name, target / name, md5)
        return target
    where = ", ".join(str(d) for d in candidates)
    raise DataMissingError(
        f"Fashion-MNIST not found in {where}. Install it with `sudo apt-get install dataset-fashion-mnist`, "
        f"put the four IDX files ({', '.join(FILES)}) in a directory and set data.root, "
        "or (online) --set data.download=true")


def _file(d: Path, name: str) -> Path:
    return d / name if (d / name).exists() else d / name[:-3]


def load(root: str | None, download_ok: bool, normalize: bool) -> tuple:
    """(x_train, y_train, x_test, y_test): images as stored, uint8 (N, 1, 28, 28), decoded per batch to
    (N, 1, 32, 32): normalized, then zero-padded (in normalized space) to the CIFAR networks' size."""
    d = find_dir(root, download_ok)
    stats = {"mean": (MEAN,), "std": (STD,)} if normalize else {}
    tensors = []
    for split in ("train", "t10k"):
        images = _checked(d, f"{split}-images-idx3-ubyte.gz", 3)
        labels = _checked(d, f"{split}-labels-idx1-ubyte.gz", 1)
        if images.shape[1:] != (28, 28) or len(labels) != len(images) or labels.max(initial=0) > 9:
            raise DataMissingError(f"{d}: the {split} files are not Fashion-MNIST (images {images.shape}, "
                                   f"{len(labels)} labels in 0..{labels.max(initial=0)}; expected 28x28 images, "
                                   f"one label in 0..9 each); delete them and fetch them again")
        tensors += [Images(torch.from_numpy(images.copy()).unsqueeze(1), frame=2, **stats),
                    torch.from_numpy(labels.astype(np.int64))]
    return tuple(tensors)


def _checked(d: Path, name: str, ndim: int) -> np.ndarray:
    """File ``name`` of directory ``d`` parsed, with a damaged file (random bytes, truncated gzip) or one that is
    not the official one (its content's SHA-256) as one DataMissingError naming it."""
    path = _file(d, name)
    try:
        data = idx_bytes(path)
        array = parse_idx(data, path)
    except (OSError, EOFError, ValueError, IndexError, zlib.error) as err:
        raise DataMissingError(f"{path}: damaged, not an IDX file ({err}); delete it and fetch it again") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != CONTENT[name]:
        raise DataMissingError(f"{path}: not the official Fashion-MNIST file (SHA-256 of its IDX content {digest[:16]}"
                               f"..., expected {CONTENT[name][:16]}...; a subset or another data set would pass as "
                               f"Fashion-MNIST under the same run id); fetch the official files, or register other "
                               f"data under its own name (gstlab.registry.datasets)")
    if array.ndim != ndim:
        raise DataMissingError(f"{path}: an IDX file of {array.ndim} dimensions, expected {ndim}; delete it and "
                               f"fetch it again")
    return array
