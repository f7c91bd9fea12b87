"""Pruning events: at a scheduled epoch, score the untargeted units of each layer, pick k, and act on them.

The pruner only decides *which* units are targeted (schedule §7.3, scores §7.4, selection §7.5) and keeps
the record of units targeted so far. What happens to them is the ``action``: permanent pruning by masks, or a
non-permanent intervention (see ``gstlab.interventions``). Every decision is a :class:`PruningEvent`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from gstlab.config import ConfigError, PruningConfig
from gstlab.models.units import PrunableUnit, unit_count
from gstlab.pruning import scores as S
from gstlab.pruning.criteria import Layer
from gstlab.pruning.schedule import event_epochs, units_to_remove
from gstlab.pruning.select import select_to_prune
from gstlab.registry import criteria


@dataclass
class PruningEvent:
    """One layer's share of one event. Instability is a query over these records."""

    epoch: int
    layer: str
    action: str
    criterion: str
    side: str
    units_before: int
    units_removed: int
    units_remaining: int
    mean_score: float
    acc_before: float = math.nan
    acc_after: float = math.nan
    duration_batches: int = 0
    indices: list[int] = field(default_factory=list)
    unit_scores: list[float] = field(default_factory=list)  # the criterion's score of each of ``indices``

    @property
    def instability(self) -> float:
        return (self.acc_before - self.acc_after) / self.acc_before if self.acc_before else math.nan

    def row(self) -> dict:
        out = asdict(self)
        out["units"] = " ".join(str(i) for i in out.pop("indices"))  # the layer's unit numbers, as built
        out["scores"] = " ".join(repr(v) for v in out.pop("unit_scores"))  # shortest exact repr of each float
        out["instability"] = self.instability
        return out


Action = Callable[[PrunableUnit, torch.Tensor], None]  # (unit, absolute unit indices) -> None


class Pruner:
    """Runs the configured schedule. ``action(unit, indices)`` is applied to each layer's targeted units."""

    def __init__(self, model: nn.Module, units: list[PrunableUnit], cfg: PruningConfig,
                 generator: torch.Generator, action: Action, action_name: str = "prune",
                 tracker: S.ActivationTracker | None = None) -> None:
        self.model, self.cfg, self.generator = model, cfg, generator
        self.action, self.action_name, self.tracker = action, action_name, tracker
        by_name = {u.name: u for u in units}
        self.layers = [(by_name[s.name], s) for s in _forward_order(cfg, units)]
        self.epochs = {
            s.name: event_epochs(s.start, s.end, cfg.period_of(s)) for _, s in self.layers
        }
        self.duration_batches = 0  # interventions: how long each event lasts, recorded with it
        self.targeted = {u.name: torch.zeros(unit_count(model, u), dtype=torch.bool) for u, _ in self.layers}
        self.criterion = criteria.get(cfg.criterion)
        self._check_scores()

    def _check_scores(self) -> None:
        if self.criterion.needs_bn:
            for unit, _ in self.layers:
                if unit.bn is None or self.model.get_submodule(unit.bn).weight is None:
                    allowed = ", ".join(name for name, c in criteria.loadable() if not c.needs_bn)
                    raise ConfigError(f"pruning.criterion={self.cfg.criterion} needs a BatchNorm with gamma and "
                                      f"beta (affine) after layer {unit.name!r}; allowed criteria for it: {allowed}")
        if self.criterion.needs_activations and self.tracker is None:
            raise ValueError(f"pruning.criterion={self.cfg.criterion} needs an ActivationTracker")

    def due(self, epoch: int) -> bool:
        return any(epoch in eps for eps in self.epochs.values())

    def step(self, epoch: int) -> list[PruningEvent]:
        """Run this epoch's event for every scheduled layer (forward order); layers with k = 0 are skipped."""
        events = []
        for unit, sched in self.layers:
            epochs = self.epochs[sched.name]
            if epoch not in epochs:
                continue
            event = self._layer_event(unit, sched.fraction, epochs, epoch)
            if event is not None:
                events.append(event)
        return events

    def _layer_event(self, unit: PrunableUnit, fraction: float, epochs: list[int],
                     epoch: int) -> PruningEvent | None:
        targeted = self.targeted[unit.name]
        n, before = targeted.numel(), int((~targeted).sum())
        k = units_to_remove(n, fraction, len(epochs), epochs.index(epoch) + 1, n - before)
        if k <= 0:
            return None
        candidates = torch.nonzero(~targeted).flatten()
        scores = self._scores(unit)  # on the model's device, or wherever a registered criterion made them
        scores = scores[candidates.to(scores.device)].detach().cpu()
        scores = scores if scores.dtype == torch.float64 else scores.float()  # float64 kept: no ties, no inf
        chosen = select_to_prune(scores, k, self.cfg.side, self.generator)
        indices = candidates[chosen]
        targeted[indices] = True
        self.action(unit, indices)
        return PruningEvent(
            epoch=epoch, layer=unit.name, action=self.action_name, criterion=self.cfg.criterion,
            side=self.cfg.side, units_before=before, units_removed=k, units_remaining=before - k,
            mean_score=float(scores[chosen].mean()), duration_batches=self.duration_batches,
            indices=indices.tolist(), unit_scores=scores[chosen].tolist(),
        )

    def _scores(self, unit: PrunableUnit) -> torch.Tensor:
        bn = self.model.get_submodule(unit.bn) if unit.bn is not None else None
        layer = Layer(unit, self.model.get_submodule(unit.module), bn, self.generator, self.tracker)
        return checked_scores(self.criterion.scores(layer), layer.n_units, self.cfg.criterion, unit.name)

    def state_dict(self) -> dict:
        return {"targeted": {k: v.clone() for k, v in self.targeted.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["targeted"].items():
            self.targeted[name].copy_(value)


def _forward_order(cfg: PruningConfig, units: list[PrunableUnit]):
    """The configured layer schedules, in the model's forward order."""
    order = {u.name: i for i, u in enumerate(units)}
    return sorted(cfg.layers, key=lambda s: order[s.name])


def checked_scores(scores, n_units: int, criterion: str, layer: str) -> torch.Tensor:
    """A criterion's scores, refused unless they are a 1-d tensor of one finite score per unit: a NaN would make
    the cutoff select no unit, and scores of the wrong length would prune by another axis."""
    where = f"pruning.criterion: {criterion!r} scored layer {layer!r}"
    if not torch.is_tensor(scores) or scores.shape != (n_units,):
        got = f"shape {tuple(scores.shape)}" if torch.is_tensor(scores) else f"a {type(scores).__name__}"
        raise ConfigError(f"{where} with {got}; allowed: a 1-d tensor of its {n_units} units' scores")
    if not bool(torch.isfinite(scores).all()):
        raise ConfigError(f"{where} with {int((~torch.isfinite(scores)).sum())} non-finite scores (NaN or inf); "
                          f"allowed: finite scores")
    return scores
