"""Data sets as device-resident tensors: fashion_mnist (offline default), cifar10/100, mnist1d, synthetic."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from gstlab.config import ConfigError, DataConfig
from gstlab.data import cifar, fashion_mnist, generated
from gstlab.data.download import DataMissingError
from gstlab.data.label_noise import LabelNoise, corrupt_labels
from gstlab.data.tensor_data import Images, TensorData, TrainLoader, augment_batch, crop_padding
from gstlab.registry import datasets

__all__ = ["BUILT_IN", "DataMissingError", "Facts", "Images", "TensorData", "TrainLoader", "as_integer",
           "augment_batch", "check_image_size", "check_subsets", "crop_padding", "downsample", "load_data"]


class Facts(NamedTuple):
    """What a built-in data set is, known without loading it."""

    shape: tuple[int, ...]  # one input example as the model sees it (Fashion-MNIST is padded to 32x32)
    classes: int
    train: int  # examples in the training split
    test: int


BUILT_IN = {"fashion_mnist": Facts((1, 32, 32), 10, 60000, 10000), "cifar10": Facts((3, 32, 32), 10, 50000, 10000),
            "cifar100": Facts((3, 32, 32), 100, 50000, 10000), "mnist1d": Facts((1, 40), 10, 4000, 1000)}


def _raw(cfg: DataConfig, source: Callable[[DataConfig], tuple[tuple, int]] | None) -> tuple[tuple, int]:
    out = (source or datasets.get(cfg.name))(cfg)
    try:
        (x_train, y_train, x_test, y_test), classes = out
    except (TypeError, ValueError):
        raise ConfigError(f"data.name: {cfg.name!r} returned {type(out).__name__}; allowed: "
                          f"((x_train, y_train, x_test, y_test), classes)") from None
    # loaded on the CPU (load_data's contract), also when a registered source hands over GPU tensors; numpy
    # arrays and integers as torch's
    x_train, y_train, x_test, y_test = (t.to("cpu") if isinstance(t, (torch.Tensor, Images)) else
                                        torch.from_numpy(t) if isinstance(t, np.ndarray) else t
                                        for t in (x_train, y_train, x_test, y_test))
    classes = as_integer(classes)
    source_name = "data (given to gstlab.api.run)" if cfg.supplied else f"data.name: {cfg.name!r}"
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if not isinstance(x, (torch.Tensor, Images)):
            raise ConfigError(f"{source_name} gave {split} inputs as a {type(x).__name__}; allowed: a tensor, a "
                              f"numpy array or gstlab.data.Images")
        _check_labels(source_name, split, x, y, classes)
        _check_inputs(source_name, split, x)
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise ConfigError(f"{source_name} gave train inputs of shape {tuple(x_train.shape[1:])} and test inputs of "
                          f"shape {tuple(x_test.shape[1:])}; allowed: one shape for both")
    as_images = [x if isinstance(x, Images) else Images(x) for x in (x_train, x_test)]  # float: model input
    return (as_images[0], y_train.long(), as_images[1], y_test.long()), classes  # int8 labels would wrap in noise


def as_integer(value):
    """``value`` as an int when it is an integer of any type (numpy's too), else as it is (refused later)."""
    try:
        return operator.index(value) if not isinstance(value, bool) else value
    except TypeError:
        return value


def _check_labels(source_name: str, split: str, x, y, classes) -> None:
    """A data source's labels: one class index in 0..classes-1 per input (a float label would be truncated, an
    index out of range fails deep in the loss)."""
    ok = (torch.is_tensor(y) and y.dim() == 1 and not y.is_floating_point() and not y.is_complex()
          and isinstance(classes, int) and len(y) == len(x) and len(y) > 0)
    if ok:
        ok = 0 <= int(y.min()) and int(y.max()) < classes
    if not ok:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        inputs = len(x) if hasattr(x, "__len__") else "?"
        raise ConfigError(f"{source_name} gave {split} labels {got} for {inputs} inputs and {classes!r} "
                          f"classes; allowed: a 1-d integer tensor of class indices in 0..classes-1, one per input")


def _check_inputs(source_name: str, split: str, x) -> None:
    """Float inputs must be finite: a NaN would reach the loss of every batch that holds it, and the run would
    be reported as diverged rather than as given bad data. (uint8 pixels are finite by type; their decoding
    is checked by ``_check_normalization``.)"""
    raw = x.raw if isinstance(x, Images) else x
    if torch.is_tensor(raw) and raw.dim() < 2:
        raise ConfigError(f"{source_name} gave {split} inputs of shape {tuple(raw.shape)}, one number per example; "
                          f"allowed: (N, C, ...) inputs with a channel (or feature) dimension, e.g. x.unsqueeze(1)")
    if isinstance(x, Images):
        _check_normalization(source_name, split, x)
    if not torch.is_tensor(raw) or raw.dtype == torch.uint8:
        return
    if raw.is_complex():
        raise ConfigError(f"{source_name} gave {split} inputs of dtype {raw.dtype}; allowed: uint8 pixels or real "
                          f"floating-point values (float32 would drop the imaginary part)")
    if not raw.is_floating_point():
        raise ConfigError(f"{source_name} gave {split} inputs of dtype {raw.dtype}; allowed: uint8 pixels (decoded "
                          f"to [0, 1]) or floating-point values (used as they are): an integer type other than "
                          f"uint8 would reach the model unscaled, as float32")
    bad = int((~torch.isfinite(raw)).sum())
    if bad:
        raise ConfigError(f"{source_name} gave {split} inputs with {bad} non-finite value(s) (NaN or inf); "
                          f"allowed: finite numbers")


def _check_normalization(source_name: str, split: str, x: Images) -> None:
    """An Images' mean and std decode every pixel: a zero or non-finite std (or a non-finite mean) makes
    non-finite model inputs, a length other than 1 or the channel count fails in the first batch."""
    channels = x.raw.shape[1] if x.raw.dim() > 1 else 1
    try:
        mean, std = [float(v) for v in x.mean], [float(v) for v in x.std]
    except (TypeError, ValueError):
        mean, std = [math.nan], []
    ok = (len(mean) == len(std) and len(mean) in (0, 1, channels) and all(math.isfinite(v) for v in mean + std)
          and all(v > 0 for v in std))
    if not ok:
        raise ConfigError(f"{source_name} gave {split} inputs with mean {tuple(x.mean)} and std {tuple(x.std)}; "
                          f"allowed: both empty, or both of 1 or {channels} (channels) finite numbers, std > 0")


# the registered data sets (gstlab.registry.datasets): DataConfig -> ((x_train, y_train, x_test, y_test), classes)


def load_fashion_mnist(cfg: DataConfig) -> tuple[tuple, int]:
    return fashion_mnist.load(cfg.root, cfg.download, cfg.normalize), BUILT_IN["fashion_mnist"].classes


def load_cifar(cfg: DataConfig) -> tuple[tuple, int]:
    return cifar.load(cfg.name, cfg.root, cfg.download, cfg.normalize), BUILT_IN[cfg.name].classes


def load_mnist1d(cfg: DataConfig) -> tuple[tuple, int]:
    return generated.mnist1d(), BUILT_IN["mnist1d"].classes


def load_synthetic(cfg: DataConfig) -> tuple[tuple, int]:
    return generated.synthetic(tuple(cfg.synthetic_shape), cfg.synthetic_classes, cfg.synthetic_train,
                               cfg.synthetic_test), cfg.synthetic_classes


DECODE_CHUNK = 4096  # examples decoded at a time by downsample (bounds its temporary float32 copy)


def check_subsets(cfg: DataConfig, n_train: int, n_test: int) -> None:
    """ConfigError when ``data.train_subset`` / ``test_subset`` ask for more examples than the splits have."""
    for name, asked, size in (("train_subset", cfg.train_subset, n_train), ("test_subset", cfg.test_subset, n_test)):
        if asked is not None and asked > size:
            what = "the data given to gstlab.api.run" if cfg.supplied else cfg.name
            raise ConfigError(f"data.{name}: {asked:,} examples asked but {what} has {size:,}; allowed: at most "
                              f"{size:,} (or null: all)")


def check_image_size(size: int, shape: tuple[int, ...]) -> None:
    """ConfigError unless ``size`` divides the side of square images of ``shape`` (C, H, W)."""
    if len(shape) != 3 or shape[1] != shape[2] or shape[2] % size:
        raise ConfigError(f"data.image_size: {size} must divide the side of square images; the data has shape "
                          f"{tuple(shape)}")


def downsample(x: Images, size: int) -> Images:
    """Square images (N, C, H, H), decoded, averaged over ``H/size`` x ``H/size`` blocks to (N, C, size, size)
    and kept in that float form (the same size in memory as uint8 at twice the side)."""
    shape = x.shape
    side = shape[-1]
    check_image_size(size, tuple(shape[1:]))
    if side == size:
        return x
    chunks = [torch.nn.functional.avg_pool2d(x[i:i + DECODE_CHUNK], side // size)
              for i in range(0, len(x), DECODE_CHUNK)]
    return dataclasses.replace(x, raw=torch.cat(chunks), frame=0)


def load_data(cfg: DataConfig, seed: int, source: Callable[[DataConfig], tuple[tuple, int]] | None = None
              ) -> TensorData:
    """Load ``cfg.name`` (or what ``source``, a loader shaped as a registered one, returns) on the CPU, as
    stored (see :class:`Images`). ``train_subset``: a random subset chosen
    with ``seed`` (sorted, so the batch order still comes only from the loader); ``test_subset``: the first N
    test examples. Subsets are taken before anything is decoded. ``label_noise``: see
    :mod:`gstlab.data.label_noise`, applied to the subset; ``TensorData.label_noise`` keeps the clean labels
    and which are noisy."""
    (x_train, y_train, x_test, y_test), classes = _raw(cfg, source)
    check_subsets(cfg, len(x_train), len(x_test))
    if cfg.train_subset is not None and cfg.train_subset < len(x_train):
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(x_train), generator=g)[:cfg.train_subset].sort().values
        x_train, y_train = x_train.select(keep), y_train[keep]
    if cfg.test_subset is not None:
        x_test, y_test = x_test.select(slice(0, cfg.test_subset)), y_test[:cfg.test_subset]
    if cfg.image_size is not None:
        x_train, x_test = downsample(x_train, cfg.image_size), downsample(x_test, cfg.image_size)
    noise = None
    if cfg.label_noise > 0:
        given, noisy = corrupt_labels(y_train, classes, cfg.label_noise, seed)
        noise, y_train = LabelNoise(noisy, y_train, given), given
    return TensorData(x_train, y_train, x_test, y_test, classes, cfg.name, noise)
