"""Score criteria as registered objects (the pattern of Torch-Pruning's ``Importance`` classes).

A criterion turns one prunable layer into one score per unit; the side (smallest / random / largest) then
chooses among the untargeted units by these scores. A new criterion is a subclass of :class:`Criterion` and one
registration, after which ``pruning.criterion`` accepts its name::

    class Taylor(Criterion):
        description = "..."
        def scores(self, layer: Layer) -> torch.Tensor: ...

    gstlab.registry.criteria.register("taylor", Taylor())

The built-ins are the paper's (docs: README, "Pruning"); their functions live in ``gstlab.pruning.scores``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gstlab.models.units import PrunableUnit
from gstlab.pruning import scores as S


@dataclass(frozen=True)
class Layer:
    """One prunable layer as a criterion sees it: its units are the output units (weight rows) of ``module``."""

    unit: PrunableUnit
    module: nn.Module  # the Conv/Linear whose output units are scored
    bn: nn.Module | None  # the BatchNorm that normalizes those units, if the layer has one
    generator: torch.Generator  # the run's pruning stream (for criteria that draw random numbers)
    tracker: S.ActivationTracker | None  # activation statistics, kept when the criterion needs_activations

    @property
    def n_units(self) -> int:
        return int(self.module.weight.shape[0])


class Criterion:
    """Base class: ``scores(layer)`` returns a tensor of shape (n_units,) on any device (larger = more important
    for Prune_S, which removes the smallest). A criterion holds no state of a run."""

    description: str = ""  # one line, shown in study reports
    needs_bn: bool = False  # scores come from the BatchNorm after the layer (a layer without one is refused)
    needs_activations: bool = False  # the run keeps an ActivationTracker on the scheduled layers

    def scores(self, layer: Layer) -> torch.Tensor:
        raise NotImplementedError


class L1Norm(Criterion):
    description = "L1 norm of the unit's weights"

    def scores(self, layer: Layer) -> torch.Tensor:
        return S.l1(layer.module.weight.detach())


class L2Norm(Criterion):
    description = "L2 norm of the unit's weights"

    def scores(self, layer: Layer) -> torch.Tensor:
        return S.l2(layer.module.weight.detach())


class ExpectedBN(Criterion):
    """E[ReLU(X)] for X ~ N(beta, gamma^2) of the following BatchNorm (``signed``: the official EBN_alt)."""

    needs_bn = True

    def __init__(self, signed: bool = False) -> None:
        self.signed = signed
        self.description = ("E[ReLU] of the BatchNorm output, signed gamma (official EBN_alt)" if signed
                            else "expected ReLU output E[ReLU(N(beta, gamma^2))] of the following BatchNorm")

    def scores(self, layer: Layer) -> torch.Tensor:
        fn = S.ebn_signed if self.signed else S.ebn
        return fn(layer.bn.weight.detach(), layer.bn.bias.detach())


class Activation(Criterion):
    description = "running mean of the unit's summed |activation| over training batches"
    needs_activations = True

    def scores(self, layer: Layer) -> torch.Tensor:
        return layer.tracker.scores(layer.unit.name)


class Random(Criterion):
    description = "uniform random scores from the pruning stream"

    def scores(self, layer: Layer) -> torch.Tensor:
        return S.random_scores(layer.n_units, layer.generator).to(layer.module.weight.device)


L1, L2, EBN, EBN_SIGNED = L1Norm(), L2Norm(), ExpectedBN(), ExpectedBN(signed=True)
ACTIVATION, RANDOM = Activation(), Random()
