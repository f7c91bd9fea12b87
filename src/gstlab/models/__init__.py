"""The model zoo: the paper's CIFAR networks and a small MLP, each declaring its prunable units."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from gstlab.config import ConfigError, ModelConfig
from gstlab.errors import one_line
from gstlab.models.mlp import MLP
from gstlab.models.resnet import resnet18, resnet20, resnet56
from gstlab.models.units import PrunableUnit, units_from_names
from gstlab.models.vgg import IMAGE_SIZES, vgg11_bn
from gstlab.registry import architectures

_CONV_NETS = {"vgg11_bn": vgg11_bn, "resnet18": resnet18, "resnet20": resnet20, "resnet56": resnet56}
RESNET_IMAGE_SIZES = (32, 16)  # three stride-2 stages and global average pooling

__all__ = ["PrunableUnit", "build_model", "trained_copy", "units_from_names"]


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                builder: Callable[[ModelConfig, tuple[int, ...], int], nn.Module] | None = None) -> nn.Module:
    """Build ``cfg.arch`` (any registered architecture, ``gstlab.registry.architectures``), or with ``builder``
    (shaped as a registered one), for inputs of ``input_shape`` (C, H, W) / (C, L) and ``num_classes`` outputs."""
    model = (builder or architectures.get(cfg.arch))(cfg, tuple(input_shape), num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.arch: {cfg.arch!r} built a {type(model).__name__}, not a torch.nn.Module "
                          f"instance; its builder must return the model")
    if builder is None and not architectures.shipped(cfg.arch):  # it may hand out one instance (pretrained) twice
        return trained_copy(model, f"model.arch: {cfg.arch!r}")
    return model


def trained_copy(model: nn.Module, where: str) -> nn.Module:
    """The copy of a user's model that gstlab trains (the user's object is never changed); ConfigError naming
    ``where`` when it cannot be deep-copied."""
    try:
        return copy.deepcopy(model)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"{where}: copy.deepcopy fails on the model ({one_line(err)}); gstlab trains a copy, so "
                          f"allowed: a model that can be deep-copied") from None


def unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's buffers its state dict leaves out (``persistent=False``): a user's model may keep state there
    (a running statistic, a step count) that a resumed run or a loaded model needs."""
    saved = model.state_dict().keys()
    return {n: b for n, b in model.named_buffers() if n not in saved}


def load_unsaved_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put ``unsaved_buffers``' values back into ``model``'s buffers of those names (absent in files written
    before 2026-12-07: nothing to put back)."""
    held = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in buffers.items():
            if name in held and held[name].shape == value.shape:
                held[name].copy_(value)
            elif name in held:
                owner, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner), leaf, value.to(held[name].device))


def build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(tuple(input_shape), num_classes, tuple(cfg.hidden), cfg.batch_norm)


def build_conv_net(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """vgg11_bn and the ResNets, for the square image sizes each supports."""
    sizes = IMAGE_SIZES if cfg.arch == "vgg11_bn" else RESNET_IMAGE_SIZES
    if len(input_shape) != 3 or input_shape[1] != input_shape[2] or input_shape[1] not in sizes:
        allowed = ", ".join(f"{s}x{s}" for s in sizes)
        raise ConfigError(f"model.arch: {cfg.arch} needs square images of side {allowed}, the data has shape "
                          f"{tuple(input_shape)}; allowed for other shapes: mlp (or set data.image_size)")
    if cfg.arch == "vgg11_bn":
        try:
            return vgg11_bn(input_shape[0], num_classes, cfg.width, input_shape[1], tuple(cfg.channels),
                            tuple(cfg.vgg_pools))
        except ValueError as err:
            raise ConfigError(f"model.vgg_pools: {err}") from None
    return _CONV_NETS[cfg.arch](input_shape[0], num_classes, cfg.width)
