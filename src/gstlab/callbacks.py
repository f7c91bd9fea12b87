"""Epoch callbacks: a typed protocol, and the view of a run they get.

A callback runs after each epoch's events (``after_epoch``), writes its files with the run's tables
(``write``) and keeps its state in the run's checkpoints (``state_dict``/``load_state_dict``), so a resumed run
ends as an uninterrupted one. It sees a :class:`RunView`, not the run being executed: the config, the output
directory, the model and its masks, and the run's tables, to which it appends its rows (the tables are saved in
checkpoints). Callbacks observe (they are not part of the run id): the runner refuses one that leaves the model's
parameters or buffers or the masks changed, and puts torch's global random state back after them. Flatness
probes (``gstlab.probes``) are such a callback. A callback that cannot do what the run
asks of it raises :class:`EndRun`: the run ends after that epoch as failed, with the reason in its summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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
    rows: dict[str, list[dict]]  # the run's tables by name (metrics, events, curvature, eps): append only


class EpochCallback(Protocol):
    def after_epoch(self, run: RunView, epoch: int, events: Sequence[PruningEvent]) -> None:
        """After epoch ``epoch`` (0-based), its pruning or intervention ``events`` (maybe none) and their
        evaluation."""

    def write(self, run: RunView) -> None:
        """Write this callback's files into ``run.out`` from ``run.rows`` (at checkpoints and at the end)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
