"""Epoch callbacks: a typed protocol, and the view of a run they get.

A callback runs after each epoch's events (``after_epoch``), writes its files with the run's tables
(``write``) and keeps its state in the run's checkpoints (``state_dict``/``load_state_dict``), so a resumed run
ends as an uninterrupted one. It sees a :class:`RunView`, not the run being executed: the config, the output
directory, the model and its masks, and the run's tables, to which it appends its rows (the tables are saved in
checkpoints). Callbacks observe (they are not part of the run id): the runner refuses one that leaves anything
:func:`observed` holds changed (the model's state and masks, a parameter's object or ``requires_grad``, the
activation tracker's scores), and puts torch's global random state back after them. Flatness
probes (``gstlab.probes``) are such a callback. A callback that cannot do what the run
asks of it raises :class:`EndRun`: the run ends after that epoch as failed, with the reason in its summary.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from gstlab.config import RunConfig

if TYPE_CHECKING:
    from gstlab.pruning.masks import UnitMasks
    from gstlab.pruning.pruner import PruningEvent


class EndRun(Exception):  # noqa: N818 (a request, not an error of the callback's code)
    """Raised by ``after_epoch`` to end the run as failed after this epoch: the epoch's rows are kept, the run's
    summary has ``status: failed`` and ``failure`` naming the callback and ``str(exc)``, and the run is final
    (resuming returns it; a changed config is a new run)."""


@dataclass(frozen=True)
class RunView:
    """What an epoch callback sees of a run."""

    cfg: RunConfig
    out: Path  # the run directory
    model: nn.Module  # the model as training left it (masks applied)
    masks: UnitMasks
    # the run's tables by name (metrics, events, classes, curvature, eps), append only; the epoch's metrics and
    # events rows are added after the callbacks (its events come as after_epoch's argument)
    rows: dict[str, list[dict]]


class EpochCallback(Protocol):
    def after_epoch(self, run: RunView, epoch: int, events: Sequence[PruningEvent]) -> None:
        """After epoch ``epoch`` (0-based), its pruning or intervention ``events`` (maybe none) and their
        evaluation."""

    def write(self, run: RunView) -> None:
        """Write this callback's files into ``run.out`` from ``run.rows`` (at checkpoints and at the end)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def observed(model: nn.Module, tracker_state: dict | None = None, keep: bool = True) -> dict[str, Any]:
    """What a callback may not change, by the name a refusal gives it: the model's state (parameters, buffers,
    extra states), each parameter's object and ``requires_grad`` (the optimizer holds the objects), and the
    activation tracker's state (the activation criterion prunes by it). ``keep``: copied into host memory (the
    state before the callbacks); else the live values, to compare with such a copy."""
    hold = _copy if keep else (lambda value: value)
    seen = {f"the model's {key}": hold(value) for key, value in model.state_dict().items()}
    seen.update({f"the model's parameter {name} (its object or requires_grad)": (id(p), p.requires_grad)
                 for name, p in model.named_parameters()})
    if tracker_state is not None:
        seen["the activation tracker's scores"] = hold(tracker_state)
    return seen


def first_change(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The name of the first entry of ``observed`` that differs, was added or was removed; None: none."""
    names = [*before, *(name for name in after if name not in before)]
    return next((n for n in names if n not in before or n not in after or not _same(before[n], after[n])), None)


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)  # not a large model's second copy on its GPU
    if isinstance(value, dict):
        return {key: _copy(v) for key, v in value.items()}
    return copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    """Bit for bit alike: tensors as their bytes (-0.0 is not 0.0, a NaN is itself), dicts entry by entry, other
    values by ``==`` or, where that gives no answer, by their pickles (alike where neither can tell)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(_bytes(a), _bytes(b)))
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (an array's ambiguous truth value, a comparison that raises)
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:  # noqa: BLE001
            return True


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).cpu()  # a live GPU tensor: one at a time
