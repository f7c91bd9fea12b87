"""Structured unit masks: registered buffers, applied in place to everything that carries a pruned unit.

Each prunable layer gets a float buffer ``unit_mask`` (1 = alive, 0 = pruned), saved with the model state.
A pruned unit ``c`` is dead everywhere it could leak: the layer's weight row ``c`` and bias ``c``, the
following BatchNorm's gamma ``c`` and beta ``c`` (its running mean ``c`` if it has no affine parameters), and
the residual shortcut added into channel ``c``
(``block.shortcut_mask``). Masks are multiplied into the parameters in place after every optimizer step, so
no second copy of the weights exists and the forward pass is untouched; optimizer state (momentum, Adam
moments) of pruned entries is zeroed when they are pruned. Pruned entries are exactly 0 at every forward pass;
with ``bn_masking: false`` a pruned weight row still gets gradients through its live BatchNorm, so its Adam
moments build up again, without effect (the row is re-masked after every step).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from gstlab.models.units import PrunableUnit, unit_count

MASK_BUFFER = "unit_mask"


def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


class UnitMasks:
    """All unit masks of a model. ``bn_masking=False`` masks only the layer weights (paper Figure 5 control)."""

    def __init__(self, model: nn.Module, units: list[PrunableUnit], bn_masking: bool = True) -> None:
        self.model = model
        self.units = {u.name: u for u in units}
        self.bn_masking = bn_masking
        for unit in units:
            layer = model.get_submodule(unit.module)
            if not hasattr(layer, MASK_BUFFER):
                w = layer.weight
                layer.register_buffer(MASK_BUFFER, torch.ones(unit_count(model, unit), device=w.device, dtype=w.dtype))
        self._active: set[str] = set()
        self.refresh()

    # ----------------------------------------------------------------------------------------------- queries
    def mask(self, name: str) -> torch.Tensor:
        return getattr(self.model.get_submodule(self.units[name].module), MASK_BUFFER)

    def alive(self, name: str) -> torch.Tensor:
        """Bool tensor, True = unit still alive."""
        return self.mask(name) != 0

    def n_pruned(self, name: str) -> int:
        return int((self.mask(name) == 0).sum())

    def total_pruned(self) -> int:
        return sum(self.n_pruned(n) for n in self.units)

    def refresh(self) -> None:
        """Recompute which layers have pruned units (after loading a state dict)."""
        self._active = {n for n in self.units if self.n_pruned(n) > 0}

    # ---------------------------------------------------------------------------------------------- updates
    def prune(self, name: str, indices: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Mark units ``indices`` (absolute unit indices) of layer ``name`` dead and zero them everywhere."""
        with torch.no_grad():
            self.mask(name)[indices.to(self.mask(name).device)] = 0
        self._active.add(name)
        self.apply_(name)
        if optimizer is not None:
            self.zero_optimizer_state(optimizer, name)

    @torch.no_grad()
    def apply_(self, name: str | None = None) -> None:
        """Zero every tensor slice that belongs to a pruned unit (all layers, or one)."""
        for n in [name] if name is not None else self._active:
            mask = self.mask(n)
            for tensor in self._unit_tensors(self.units[n]):
                tensor.mul_(_broadcast(mask, tensor))

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        mask = self.mask(name)
        params = {id(p) for p in self._unit_params(self.units[name])}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in params or p not in optimizer.state:
                    continue
                for value in optimizer.state[p].values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.mul_(_broadcast(mask, value))

    # ---------------------------------------------------------------------------------------- what a unit owns
    def _unit_params(self, unit: PrunableUnit) -> Iterator[nn.Parameter]:
        layer = self.model.get_submodule(unit.module)
        yield layer.weight
        if not self.bn_masking:
            return  # the paper's unmasked-BN control keeps the conv bias and BN affine alive
        if layer.bias is not None:
            yield layer.bias
        if unit.bn is not None:
            bn = self.model.get_submodule(unit.bn)
            if bn.weight is not None:
                yield bn.weight
                yield bn.bias

    def _unit_tensors(self, unit: PrunableUnit) -> Iterator[torch.Tensor]:
        yield from (p.data for p in self._unit_params(unit))
        if self.bn_masking and unit.shortcut is not None:
            yield self.model.get_submodule(unit.shortcut).shortcut_mask
        if self.bn_masking and unit.bn is not None:
            bn = self.model.get_submodule(unit.bn)
            if bn.weight is None and bn.running_mean is not None:
                # no shift to zero: in eval mode a dead unit's 0 would come out as -mean/std; with its running
                # mean zeroed it comes out 0, and training on its zeros keeps that mean 0
                yield bn.running_mean

    def param_masks(self) -> dict[str, torch.Tensor]:
        """name -> bool tensor of surviving entries, for every parameter touched by a pruned unit."""
        ids = {id(p): name for name, p in self.model.named_parameters()}
        out: dict[str, torch.Tensor] = {}
        for n in self._active:
            mask = self.mask(n) != 0
            for p in self._unit_params(self.units[n]):
                keep = _broadcast(mask, p).expand_as(p)
                name = ids[id(p)]
                out[name] = out[name] & keep if name in out else keep.clone()
        return out

    def parameter_counts(self) -> tuple[int, int]:
        """(total parameters, parameters not removed by pruning)."""
        total = sum(p.numel() for p in self.model.parameters())
        removed = sum(int((~m).sum()) for m in self.param_masks().values())
        return total, total - removed
