"""A data set held as tensors (whole set on one device), with index-based batches and on-device augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TensorData:
    x_train: torch.Tensor  # float32 (N, C, H, W) or (N, C, L), normalized
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                          self.y_test.to(device), self.num_classes, self.name)


class TrainLoader:
    """Shuffled batches by index. Randomness comes only from ``generator`` (CPU), whose state the caller saves
    for exact resume: a permutation per epoch and, with ``augment``, per-sample crop offsets and flips. The
    crop pads the *normalized* image with zeros (4 pixels) and cuts the original size back out; it runs on the
    data's device, vectorized over the batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: bool,
                 generator: torch.Generator, padding: int = 4) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment, self.generator, self.padding = augment, generator, padding

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator)
        if self.augment:
            p = self.padding
            shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=self.generator)
            flips = torch.rand(n, generator=self.generator) < 0.5
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size].to(self.x.device)
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                sl = slice(start, start + self.batch_size)
                xb = augment_batch(xb, shifts[sl].to(xb.device), flips[sl].to(xb.device), self.padding)
            yield xb, yb


def crop_padding(input_shape: tuple[int, ...]) -> int:
    """The paper's 4-pixel crop padding on 32x32 images, kept in proportion for smaller ones (2 at 16x16)."""
    return max(1, round(4 * input_shape[-1] / 32))


def augment_batch(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop (zero padding ``padding``; ``shifts`` (B, 2) in [0, 2*padding]) and horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (shifts[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (shifts[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    return torch.where(flips.view(b, 1, 1, 1), out.flip(3), out)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]
