"""CIFAR-10/100 from the standard python archives (extracted directory or .tar.gz).

The batches are pickles, so they are read with :class:`BatchUnpickler`, which admits only what a CIFAR batch
holds (dicts, lists, bytes, str, numbers and numpy arrays), after each file's MD5 has been checked against the
checksums torchvision publishes for the official archives (pytorch/vision, ``torchvision/datasets/cifar.py``,
whose archive MD5s are the ones below). Files are looked for in ``data.root`` or the cache, never in the
current directory unless ``data.root`` says so.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from gstlab.data.download import CACHE, DataMissingError, download, verify
from gstlab.data.tensor_data import Images

SPECS = {
    "cifar10": {"archive": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a",
                "dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "label": b"labels", "classes": 10,
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010),
                "files": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                          "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                          "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                          "data_batch_4": "634d18415352ddfa80567beed471001a",
                          "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                          "test_batch": "40351d587109b95175f43aff81a1287e"}},
    "cifar100": {"archive": "cifar-100-python.tar.gz", "md5": "eb9058c3a382ffc7106e4002c42a8d85",
                 "dir": "cifar-100-python", "train": ["train"], "test": ["test"], "label": b"fine_labels",
                 "classes": 100, "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761),
                 "files": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}},
}
# The globals a CIFAR batch pickle may name: numpy's array reconstruction (the module moved in numpy 2) and
# the bytes encoding that protocol-2 pickles written by Python 3 use.
ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
           for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED`, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def unpickle(path: Path) -> dict:
    """One CIFAR batch; DataMissingError if the file holds anything else."""
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataMissingError(f"{path}: refused, not a CIFAR batch ({err}); delete it and fetch the official "
                               f"archive again") from None
    if not isinstance(batch, dict):
        raise DataMissingError(f"{path}: refused, not a CIFAR batch (a {type(batch).__name__})")
    return batch
URL = "https://www.cs.toronto.edu/~kriz/"


def _locate(name: str, root: str | None, download_ok: bool) -> Path:
    spec = SPECS[name]
    bases = [Path(root)] if root else [CACHE]
    for base in bases:
        if _complete(base / spec["dir"], spec):
            return base / spec["dir"]
        if (base / spec["archive"]).exists():
            verify(base / spec["archive"], spec["md5"])  # before anything is extracted (a ../ member, bytes)
            return _extract(base / spec["archive"], spec)
    if download_ok:
        base = bases[0]
        return _extract(download(URL + spec["archive"], base / spec["archive"], spec["md5"]), spec)
    incomplete = [b / spec["dir"] for b in bases if (b / spec["dir"]).is_dir()]
    lacking = f" ({incomplete[0]} lacks batch files: delete it)" if incomplete else ""
    raise DataMissingError(
        f"{name} not found under {', '.join(str(b) for b in bases)}{lacking}: put {spec['archive']} (or its "
        f"extracted {spec['dir']}/) there, set data.root to its directory (e.g. data.root=data for ./data), or "
        f"(online) --set data.download=true")


def _complete(directory: Path, spec: dict) -> bool:
    """An extracted directory holding every batch file (an incomplete one is extracted again from the archive,
    or named as missing)."""
    return directory.is_dir() and all((directory / name).is_file() for name in spec["files"])


def _extract(archive: Path, spec: dict) -> Path:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(archive.parent, filter="data")
        else:  # Python before 3.10.12 / 3.11.4 has no extraction filters: take only the batch files, by name
            wanted = {f"{spec['dir']}/{name}" for name in spec["files"]}
            tar.extractall(archive.parent, members=[m for m in tar.getmembers() if m.isfile() and m.name in wanted])
    directory = archive.parent / spec["dir"]
    missing = [name for name in spec["files"] if not (directory / name).is_file()]
    if missing:
        raise DataMissingError(f"{archive}: has no {spec['dir']}/{missing[0]}; not the official archive, delete it "
                               f"and fetch it again")
    return directory


def _read(directory: Path, files: list[str], spec: dict) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        verify(directory / name, spec["files"][name])
        batch = unpickle(directory / name)
        label_key = spec["label"]
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load(name: str, root: str | None, download_ok: bool, normalize: bool) -> tuple:
    """(x_train, y_train, x_test, y_test): images as stored, uint8 (N, 3, 32, 32), normalized per batch."""
    spec = SPECS[name]
    directory = _locate(name, root, download_ok)
    stats = {"mean": spec["mean"], "std": spec["std"]} if normalize else {}
    out = []
    for split in ("train", "test"):
        x, y = _read(directory, spec[split], spec)
        out += [Images(torch.from_numpy(x), **stats), torch.from_numpy(y)]
    return tuple(out)
