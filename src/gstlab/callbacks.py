"""Epoch callbacks: a typed protocol, and the view of a run they get.

A callback runs after each epoch's events (``after_epoch``), writes its files with the run's tables
(``write``) and keeps its state in the run's checkpoints (``state_dict``/``load_state_dict``), so a resumed run
ends as an uninterrupted one. It sees a :class:`RunView`, not the run being executed: the config, the output
directory, the model and its masks, and the run's tables, to which it appends its rows (the tables are saved in
checkpoints). Flatness probes (``gstlab.probes``) are such a callback.
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
