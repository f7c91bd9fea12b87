"""CIFAR-10/100 from the standard python archives (extracted directory or .tar.gz)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from gstlab.data.download import CACHE, DataMissingError, download

SPECS = {
    "cifar10": {"archive": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a",
                "dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "label": b"labels", "classes": 10,
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)},
    "cifar100": {"archive": "cifar-100-python.tar.gz", "md5": "eb9058c3a382ffc7106e4002c42a8d85",
                 "dir": "cifar-100-python", "train": ["train"], "test": ["test"], "label": b"fine_labels",
                 "classes": 100, "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761)},
}
URL = "https://www.cs.toronto.edu/~kriz/"


def _locate(name: str, root: str | None, download_ok: bool) -> Path:
    spec = SPECS[name]
    bases = [Path(root)] if root else [CACHE, Path("data")]
    for base in bases:
        if (base / spec["dir"]).is_dir():
            return base / spec["dir"]
        if (base / spec["archive"]).exists():
            return _extract(base / spec["archive"], spec)
    if download_ok:
        base = bases[0]
        return _extract(download(URL + spec["archive"], base / spec["archive"], spec["md5"]), spec)
    raise DataMissingError(
        f"{name} not found under {', '.join(str(b) for b in bases)}: put {spec['archive']} (or its extracted "
        f"{spec['dir']}/) there, set data.root to its directory, or (online) --set data.download=true")


def _extract(archive: Path, spec: dict) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(archive.parent, filter="data")
    return archive.parent / spec["dir"]


def _read(directory: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        with open(directory / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 (the official archive format)
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load(name: str, root: str | None, download_ok: bool, normalize: bool) -> tuple[torch.Tensor, ...]:
    spec = SPECS[name]
    directory = _locate(name, root, download_ok)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    out = []
    for split in ("train", "test"):
        x, y = _read(directory, spec[split], spec["label"])
        images = torch.from_numpy(x).float() / 255
        out += [(images - mean) / std if normalize else images, torch.from_numpy(y)]
    return tuple(out)
