"""Where a run's pieces come from: the model, the data and the prunable units.

Each piece has the shape of its registry entry (``gstlab.registry``): a model is built by an architecture
builder ``(ModelConfig, input_shape, num_classes) -> nn.Module``, data come from a data-set loader
``DataConfig -> ((x_train, y_train, x_test, y_test), num_classes)``. By default the registered ones named by
``model.arch`` and ``data.name`` provide them (the zoo and the data registry); ``gstlab.api.run`` passes the
user's own instead, and the config then records their fingerprints (``model.supplied``, ``data.supplied``), so
the run id tells two different user models or data sets apart. Everything after these pieces (subsets, label
noise, masks, schedule, events, probes, the run directory, resume) is the same path for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gstlab import config as C
from gstlab.models.units import PRUNABLE, PrunableUnit, first_name, units_from_names

ModelBuilder = Callable[[C.ModelConfig, tuple[int, ...], int], nn.Module]
DataSource = Callable[[C.DataConfig], tuple[tuple, int]]
UnitsOf = Callable[[nn.Module], list[PrunableUnit]]


@dataclass(frozen=True)
class Parts:
    """The providers of a run's pieces; None: the default (registered architecture, registered data set, the
    model's own ``prunable_units()`` or else the layers ``pruning.layers`` names)."""

    model: ModelBuilder | None = None
    data: DataSource | None = None
    units: UnitsOf | None = None
    callbacks: tuple = ()  # the user's epoch callbacks (gstlab.callbacks.EpochCallback), after the probes
    callback_states: tuple = ()  # their state when given: a run that restarts (a damaged checkpoint) resets them

    def check(self, cfg: C.RunConfig) -> None:
        """A config that records a supplied model or data needs them supplied (the CLI cannot rebuild them)."""
        pieces = (("model", cfg.model.supplied, self.model), ("data", cfg.data.supplied, self.data))
        for what, recorded, given in pieces:
            if recorded and given is None:
                raise C.ConfigError(f"{what}.supplied: this run's {what} was given to gstlab.api.run ({recorded}) and "
                                    f"cannot be rebuilt from the config; run it through the Python API with the same "
                                    f"{what}, or remove {what}.supplied")

    def units_of(self, cfg: C.RunConfig, model: nn.Module) -> list[PrunableUnit]:
        if self.units is not None:
            return checked_units(list(self.units(model)), model, "units")
        if hasattr(model, "prunable_units"):
            if not callable(model.prunable_units):
                raise C.ConfigError(f"model.prunable_units: a {type(model.prunable_units).__name__}; allowed: a "
                                    f"method returning the model's PrunableUnits")
            return checked_units(list(model.prunable_units()), model, "model.prunable_units()")
        return named_units(cfg, model)


def checked_units(units: list, model: nn.Module, where: str) -> list[PrunableUnit]:
    """``units`` as declared by the user's code (``where``), each checked against the model: ConfigError naming
    the unit and what is wrong, before a mask is built."""
    modules = dict(model.named_modules())
    for i, unit in enumerate(units):
        if not isinstance(unit, PrunableUnit):
            raise C.ConfigError(f"{where}[{i}]: a {type(unit).__name__} ({unit!r}); allowed: "
                                f"gstlab.models.PrunableUnit(name, module, bn=None, ...)")
        for field in ("module", "bn", "shortcut", "activation"):
            path = getattr(unit, field)
            first = first_name(model, path) if path is not None else None
            if first is not None:
                raise C.ConfigError(f"{where}[{i}] ({unit.name}): {field} {path!r} is the module {first!r} under a "
                                    f"second name; name it {first!r}")
        layer = modules.get(unit.module)
        if not isinstance(layer, PRUNABLE):
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): module {unit.module!r} is "
                                f"{'not in the model' if layer is None else 'a ' + type(layer).__name__}; "
                                f"allowed: a Conv1d, Conv2d or Linear of the model")
        n_units = layer.weight.shape[0]
        bn = modules.get(unit.bn) if unit.bn is not None else None
        found = None
        if unit.bn is not None and bn is None:
            found = "not in the model"
        elif unit.bn is not None and not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            found = f"a {type(bn).__name__}"
        elif bn is not None and bn.num_features != n_units:
            found = f"a {type(bn).__name__} of {bn.num_features} features"
        if found:
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): bn {unit.bn!r} is {found}; allowed: a BatchNorm "
                                f"of the {n_units} units of {unit.module!r}, or None")
        if "weight" not in layer._parameters:
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): module {unit.module!r} computes its weight (weight_norm, "
                                f"spectral_norm or another parametrization), so a mask on it would not hold; allowed: "
                                f"a layer whose weight is its own parameter")
        if unit.name in (u.name for u in units[:i] if isinstance(u, PrunableUnit)):
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): name {unit.name!r} is another unit's too; masks, "
                                f"schedules and records are keyed by name, so allowed: a name per unit")
        if unit.module in (u.module for u in units[:i] if isinstance(u, PrunableUnit)):
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): module {unit.module!r} is another unit's too; one mask "
                                f"per layer, so allowed: each module in one unit")
        for field in ("shortcut", "activation"):
            path = getattr(unit, field, None)
            if path is not None and path not in modules:
                raise C.ConfigError(f"{where}[{i}] ({unit.name}): {field} {path!r} is not in the model; allowed: "
                                    f"a module of the model ({_listed([m for m in modules if m])})")
        shortcut_mask = getattr(modules.get(unit.shortcut), "shortcut_mask", None) if unit.shortcut else None
        if unit.shortcut and (not torch.is_tensor(shortcut_mask) or shortcut_mask.numel() != n_units):
            raise C.ConfigError(f"{where}[{i}] ({unit.name}): shortcut {unit.shortcut!r} has no buffer shortcut_mask "
                                f"of {n_units} entries (one per unit, multiplied into its shortcut term); allowed: "
                                f"a block that has one, or no shortcut")
    return units


DEFAULT_PARTS = Parts()


def named_units(cfg: C.RunConfig, model: nn.Module) -> list[PrunableUnit]:
    """The units ``pruning.layers`` names, found by module name (``units_from_names``); ConfigError naming the
    layer entry when a name is not a Conv/Linear of the model."""
    units = []
    for i, layer in enumerate(cfg.pruning.layers):
        try:
            units += units_from_names(model, [layer.name])
        except ValueError as err:
            raise C.ConfigError(f"pruning.layers[{i}].name: {err}") from None
    return checked_units(units, model, "pruning.layers")


def _listed(names: list[str], most: int = 8) -> str:
    """Up to ``most`` names, comma-separated, with how many more there are."""
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more
