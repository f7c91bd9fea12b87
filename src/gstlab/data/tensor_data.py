"""A data set held as tensors (whole set on one device), decoded per batch, with index-based batches and
on-device augmentation.

Data flow: a loader returns the pixels as stored on disk (uint8 for images; float for generated sets) and how
to turn them into model input. :class:`Images` keeps the stored pixels (4x smaller than float32) and does that
turning, in one place, for every batch it is indexed with: ``float / 255`` (uint8 only), per-channel
``(x - mean) / std``, then a zero frame (in normalized space) up to the model's input size (Fashion-MNIST:
28 -> 32). Subsets are taken on the stored pixels, so the full set is never converted. With ``data.image_size``
the subset is decoded once, in chunks, and averaged over blocks (``gstlab.data.downsample``; 32 -> 16): at half
the side its float32 form is as large as the uint8 pixels, and its batches need no decoding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from gstlab.data.label_noise import LabelNoise


@dataclass(frozen=True)
class Images:
    """Stored examples (N, C, H, W) or (N, C, L) and their per-batch decoding; ``images[index]`` is the decoded
    float32 model input of those examples (any index a tensor takes)."""

    raw: torch.Tensor  # uint8 pixels, or float values that are already model input (decoded or generated)
    mean: tuple[float, ...] = ()  # per channel, of the [0, 1] pixel values; (): no normalization
    std: tuple[float, ...] = ()  # (float raw: already applied; mean/std then only say what black is)
    frame: int = 0  # pixels of zero (in normalized space) added on each side of H and W after normalizing
    channels_last: bool = False  # decoded batches in channels_last memory format

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.decode(self.raw[index:index + 1 or None])[0]
        return self.decode(self.raw[index])

    @property
    def shape(self) -> tuple[int, ...]:
        """The decoded shape (N, C, H + 2 frame, W + 2 frame)."""
        n, c, *size = self.raw.shape
        return (n, c, *(s + 2 * self.frame for s in size))

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalize(x)
        if self.frame:
            x = F.pad(x, (self.frame,) * 4)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def fill(self) -> torch.Tensor:
        """The decoded value of a black pixel per channel, shape (C,): what crop padding adds."""
        black = torch.zeros(1, *self.raw.shape[1:2], *([1] * (self.raw.dim() - 2)), dtype=torch.uint8,
                            device=self.device)
        return self._normalize(black).flatten()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x.float()
        x = x.float().div_(255)  # in place on the new float copy: the same values as out of place
        return x.sub_(self._channels(self.mean)).div_(self._channels(self.std)) if self.mean else x

    def _channels(self, values: tuple[float, ...]) -> torch.Tensor | float:
        if len(values) == 1:
            return values[0]
        return _per_channel(tuple(values), self.device, self.raw.dim())

    def select(self, index: torch.Tensor | slice) -> Images:
        """The stored examples at ``index``, still encoded."""
        return replace(self, raw=self.raw[index].contiguous())

    def to(self, device: torch.device | str) -> Images:
        return replace(self, raw=self.raw.to(device))


@functools.lru_cache(maxsize=64)
def _per_channel(values: tuple[float, ...], device: torch.device, dims: int) -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, ...) on ``device``, made once: a tensor built from Python values on
    a GPU for every batch is a blocking host-to-device copy, which stalls the queue of GPU work. Made outside
    inference mode, so that a first call under ``torch.inference_mode`` caches no tensor autograd refuses later."""
    with torch.inference_mode(False):
        return torch.tensor(values, device=device).view(1, -1, *([1] * (dims - 2)))


@dataclass
class TensorData:
    x_train: Images
    y_train: torch.Tensor  # int64 (N,)
    x_test: Images
    y_test: torch.Tensor
    num_classes: int
    name: str
    label_noise: LabelNoise | None = None  # which training labels were replaced (data.label_noise > 0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> TensorData:
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))


class TrainLoader:
    """Shuffled batches by index. Randomness comes only from ``generator`` (CPU), whose state the caller saves
    for exact resume: a permutation per epoch and, with ``augment``, per-sample crop offsets and flips. The
    crop pads the image with black pixels (4 on each side, as torchvision's ``RandomCrop`` before normalization
    in the official code) and cuts the original size back out; it runs on the data's device, vectorized over
    the batch. ``x`` is :class:`Images` (decoded per batch) or a float tensor (padded with 0)."""

    def __init__(self, x: Images | torch.Tensor, y: torch.Tensor, batch_size: int, augment: bool,
                 generator: torch.Generator, padding: int = 4, indexed: bool = False) -> None:
        self.x, self.y, self.batch_size, self.indexed = x, y, batch_size, indexed
        self.augment, self.generator, self.padding = augment, generator, padding
        self.fill = x.fill() if isinstance(x, Images) and augment else None

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n, device = len(self.x), self.x.device
        # the epoch's random numbers are drawn on the CPU as always, then copied to the device once: a copy from
        # pageable memory per batch would make the host wait for the GPU at every step
        order = torch.randperm(n, generator=self.generator).to(device)
        if self.augment:
            p = self.padding
            shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=self.generator).to(device)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                sl = slice(start, start + self.batch_size)
                xb = augment_batch(xb, shifts[sl], flips[sl], self.padding, self.fill)
            yield (xb, yb, idx) if self.indexed else (xb, yb)


def crop_padding(input_shape: tuple[int, ...]) -> int:
    """The paper's 4-pixel crop padding on 32x32 images, kept in proportion for smaller ones (2 at 16x16)."""
    return max(1, round(4 * input_shape[-1] / 32))


def augment_batch(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop (padding ``padding`` of value ``fill`` per channel, default 0; ``shifts`` (B, 2) in
    [0, 2*padding]) and horizontal flip."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    if fill is not None:
        inside = torch.zeros(1, 1, h + 2 * padding, w + 2 * padding, dtype=torch.bool, device=x.device)
        inside[..., padding:padding + h, padding:padding + w] = True
        padded = torch.where(inside, padded, fill.to(x.dtype).view(1, c, 1, 1))
    rows = (shifts[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (shifts[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    return torch.where(flips.view(b, 1, 1, 1), out.flip(3), out)
