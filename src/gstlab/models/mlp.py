"""A small MLP: Flatten -> [Linear -> BatchNorm1d? -> ReLU] x len(hidden) -> Linear. Any input shape."""

from __future__ import annotations

import math

import torch
from torch import nn

from gstlab.models.units import PrunableUnit


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...],
                 batch_norm: bool) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.n_hidden = len(hidden)
        width_in = math.prod(input_shape)
        for i, width in enumerate(hidden, start=1):
            setattr(self, f"fc{i}", nn.Linear(width_in, width))
            if batch_norm:
                setattr(self, f"bn{i}", nn.BatchNorm1d(width))
            width_in = width
        self.out = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.n_hidden + 1):
            x = getattr(self, f"fc{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x)
            x = torch.relu(x)
        return self.out(x)

    def prunable_units(self) -> list[PrunableUnit]:
        return [PrunableUnit(f"fc{i}", f"fc{i}", bn=f"bn{i}" if self.batch_norm else None)
                for i in range(1, self.n_hidden + 1)]
