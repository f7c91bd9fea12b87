"""Prunable units: which output units (conv filters / linear neurons) a layer has and what else dies with them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class PrunableUnit:
    """One prunable layer. Pruning its unit ``c`` kills output channel ``c`` everywhere it could leak.

    - ``module``: dotted path of the ``nn.Conv2d``/``nn.Linear``/``nn.Conv1d`` whose output units are pruned
      (weight row ``c`` and bias ``c``).
    - ``bn``: dotted path of the BatchNorm that normalizes that output (its gamma ``c`` and beta ``c``), if any.
    - ``shortcut``: dotted path of the residual block whose shortcut is added into these channels. The block
      owns a buffer ``shortcut_mask`` (ones, one entry per channel) multiplied into the shortcut term.
    - ``activation``: dotted path of the module whose output is this unit's activation for the ``activation``
      score (default: ``bn`` if present, else ``module``). For residual conv2 units it is the block's
      ``residual_out`` (post-addition, pre-ReLU), as in the paper.
    """

    name: str
    module: str
    bn: str | None = None
    shortcut: str | None = None
    activation: str | None = None

    @property
    def activation_module(self) -> str:
        return self.activation or self.bn or self.module


def unit_count(model: nn.Module, unit: PrunableUnit) -> int:
    """Number of output units of the unit's layer."""
    layer = model.get_submodule(unit.module)
    return int(layer.weight.shape[0])


PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)  # the layer types whose output units can be pruned


def first_name(model: nn.Module, path: str) -> str | None:
    """The name a module is known by (``named_modules``) when ``path`` is a second name of it, else None."""
    modules = dict(model.named_modules())
    if path in modules:
        return None
    alias = dict(model.named_modules(remove_duplicate=False)).get(path)
    return next((n for n, m in modules.items() if m is alias), None) if alias is not None else None


def units_from_names(model: nn.Module, names: list[str]) -> list[PrunableUnit]:
    """Prunable units for any model: each named conv/linear, with the first BatchNorm that follows it in
    module order and has the same number of features (if any). No shortcut masking is inferred."""
    modules = dict(model.named_modules())
    order = list(modules)
    units = []
    for name in names:
        if name not in modules:
            first = first_name(model, name)
            if first is not None:
                raise ValueError(f"{name!r} is the module {first!r} under a second name; name it {first!r}")
            raise ValueError(f"unknown module {name!r}; modules with weights: "
                             + ", ".join(n for n, m in modules.items() if isinstance(m, PRUNABLE)))
        layer = modules[name]
        if not isinstance(layer, PRUNABLE):
            raise ValueError(f"{name!r} is a {type(layer).__name__}; only Conv1d/Conv2d/Linear can be pruned")
        n_out = layer.weight.shape[0]
        bn = None
        for later in order[order.index(name) + 1:]:
            m = modules[later]
            if isinstance(m, PRUNABLE):
                break
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == n_out:
                bn = later
                break
        units.append(PrunableUnit(name=name, module=name, bn=bn))
    return units
