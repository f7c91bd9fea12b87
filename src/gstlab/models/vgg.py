"""VGG11 with batch norm, CIFAR variant (docs/paper.md#models), with a width multiplier.

On 32x32 inputs it is the paper's network. For the ``mini`` scale's 16x16 (or 8x8) inputs the trailing
max-pools that would shrink the map below 1x1 are left out: the eight convolutions, their names, their
BatchNorms and the single linear classifier on the last conv's channels stay as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from gstlab.models.units import PrunableUnit

CFG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
IMAGE_SIZES = {32: 5, 16: 4, 8: 3}  # input side -> max-pools kept (the first ones); the map ends at 1x1


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with a faster exact path for evaluation: 2x2 windows of stride 2 on CPU, no gradient.

    PyTorch's NCHW max-pool kernel on CPU is scalar (and computes indices): on the mini VGG's evaluation batches
    it took ~25x the time of a ReLU of the same input. A maximum is exact, so the elementwise maximum of the
    four strided quarters of the input gives the same values, 5-8x faster (benchmarks/README.md). Training
    keeps PyTorch's kernel: its backward needs the indices, and an exact replacement was not faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._quarters(x):
            return super().forward(x)
        top, bottom = x[..., 0::2, :], x[..., 1::2, :]  # window entries in PyTorch's scan order
        return torch.maximum(torch.maximum(top[..., 0::2], top[..., 1::2]),
                             torch.maximum(bottom[..., 0::2], bottom[..., 1::2]))

    def _quarters(self, x: torch.Tensor) -> bool:
        square = self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2))
        plain = self.padding in (0, (0, 0)) and self.dilation in (1, (1, 1)) and not self.ceil_mode
        no_grad = not (torch.is_grad_enabled() and x.requires_grad)
        return (square and plain and no_grad and not self.return_indices and x.device.type == "cpu"
                and x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG11BN(nn.Module):
    """``features`` (conv3x3 -> BN -> ReLU, max-pools) then a single Linear, for 32x32, 16x16 or 8x8 inputs;
    ``channels`` (8 widths) overrides ``width`` times the paper's widths; ``pools`` names which of the paper's
    five max-pools (1-5) are kept (default: the first ones, as many as the image size allows)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 image_size: int = 32, channels: tuple[int, ...] = (), pools: tuple[int, ...] = ()) -> None:
        super().__init__()
        keep = set(pools or range(1, IMAGE_SIZES.get(image_size, 0) + 1))
        if image_size not in IMAGE_SIZES or len(keep) != IMAGE_SIZES[image_size] or not keep <= {1, 2, 3, 4, 5}:
            raise ValueError(f"VGG11BN: image_size {image_size} needs {IMAGE_SIZES.get(image_size, '?')} of the "
                             f"max-pools 1-5 (sizes: {', '.join(map(str, IMAGE_SIZES))}), got pools {sorted(keep)}")
        widths = iter(channels or [_scaled(v, width) for v in CFG_A if v != "M"])
        layers: list[nn.Module] = []
        c_in, pool = in_channels, 0
        for v in CFG_A:
            if v == "M":
                pool += 1
                if pool in keep:
                    layers.append(MaxPool2d(2, 2))
                continue
            c_out = next(widths)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self._init_features()
        self.classifier = nn.Linear(c_in, num_classes)  # PyTorch default init, as in the official code

    def _init_features(self) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def prunable_units(self) -> list[PrunableUnit]:
        """conv1..conv8 in forward order; the paper prunes conv5..conv8 (features 15, 18, 22, 25)."""
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        return [PrunableUnit(name=f"conv{k}", module=f"features.{i}", bn=f"features.{i + 1}")
                for k, i in enumerate(convs, start=1)]


def vgg11_bn(in_channels: int, num_classes: int, width: float, image_size: int = 32,
             channels: tuple[int, ...] = (), pools: tuple[int, ...] = ()) -> VGG11BN:
    return VGG11BN(in_channels, num_classes, width, image_size, channels, pools)
