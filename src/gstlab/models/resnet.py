"""CIFAR ResNets: ResNet18 (kuangliu, option-B shortcuts, §4.2) and ResNet20/56 (Idelbayev, option A, §4.3).

Every BasicBlock owns a buffer ``shortcut_mask`` multiplied into its shortcut term, and an identity module
``residual_out`` that marks the post-addition, pre-ReLU activation: a pruned conv2 channel is then exactly
dead (no shortcut leaks into it), and the activation score can hook the paper's measurement point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gstlab.models.units import PrunableUnit


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad channels (parameter-free)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))
            else:
                self.shortcut = PadShortcut(in_planes, planes)
        self.residual_out = nn.Identity()
        self.register_buffer("shortcut_mask", torch.ones(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.residual_out(out + self.shortcut(x) * self.shortcut_mask.view(1, -1, 1, 1))
        return F.relu(out)

    def units(self, path: str) -> list[PrunableUnit]:
        return [
            PrunableUnit(f"{path}.conv1", f"{path}.conv1", bn=f"{path}.bn1"),
            PrunableUnit(f"{path}.conv2", f"{path}.conv2", bn=f"{path}.bn2", shortcut=path,
                         activation=f"{path}.residual_out"),
        ]


class CifarResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], strides: tuple[int, ...],
                 option: str, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        stem = _scaled(widths[0] if option == "A" else 64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        for s, (n, w, stride) in enumerate(zip(blocks, widths, strides), start=1):
            planes = _scaled(w, width)
            layer = []
            for b in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, option))
                in_planes = planes
            setattr(self, f"layer{s}", nn.Sequential(*layer))
        self.n_stages = len(blocks)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.n_stages + 1):
            out = getattr(self, f"layer{s}")(out)
        out = F.adaptive_avg_pool2d(out, 1)  # = avg_pool2d(4) / global pooling on 32x32 inputs
        return self.linear(torch.flatten(out, 1))

    def prunable_units(self) -> list[PrunableUnit]:
        """All block convs in forward order (never the stem or the 1x1 shortcut convs)."""
        units = []
        for s in range(1, self.n_stages + 1):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                units += block.units(f"layer{s}.{b}")
        return units


def resnet18(in_channels: int, num_classes: int, width: float) -> CifarResNet:
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), "B", in_channels, num_classes, width)


def _idelbayev(depth_blocks: int, in_channels: int, num_classes: int, width: float) -> CifarResNet:
    model = CifarResNet((depth_blocks,) * 3, (16, 32, 64), (1, 2, 2), "A", in_channels, num_classes, width)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return model


def resnet20(in_channels: int, num_classes: int, width: float) -> CifarResNet:
    return _idelbayev(3, in_channels, num_classes, width)


def resnet56(in_channels: int, num_classes: int, width: float) -> CifarResNet:
    return _idelbayev(9, in_channels, num_classes, width)
