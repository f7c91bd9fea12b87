"""When each layer prunes and how many units each event removes (docs/paper.md#pruning-schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def event_epochs(start: int, end: int, period: int) -> list[int]:
    """0-based epochs after which the layer prunes: ``range(start, end + 1, period)``."""
    return list(range(start, end + 1, period))


def kept_after_event(n_units: int, fraction: float, n_events: int, event_index: int) -> int:
    """Units left after event ``event_index`` (1-based) of ``n_events``: linear in the event index, ceil-rounded.

    ``final_kept = ceil((1 - fraction) * n)``;
    ``kept = ceil(final_kept + (n - final_kept) * (n_events - i) / n_events)``,
    in plain float arithmetic exactly as the official code.
    """
    final_kept = math.ceil((1 - fraction) * n_units)
    return math.ceil(final_kept + (n_units - final_kept) * (n_events - event_index) / n_events)


def units_to_remove(n_units: int, fraction: float, n_events: int, event_index: int, already_pruned: int) -> int:
    """k for this event (never negative)."""
    return max(0, n_units - kept_after_event(n_units, fraction, n_events, event_index) - already_pruned)


def iterative_rate(fraction: float, start: int, end: int, period: int) -> float:
    """Percent of the layer removed per event (the paper's Figure 3 x-axis)."""
    return 100.0 * fraction / len(event_epochs(start, end, period))


@dataclass(frozen=True)
class LayerPlan:
    name: str
    n_units: int
    fraction: float
    epochs: tuple[int, ...]

    def removals(self) -> dict[int, int]:
        """epoch -> units removed there (events with k = 0 omitted), if every event removes its k."""
        out, pruned = {}, 0
        for i, epoch in enumerate(self.epochs, start=1):
            k = units_to_remove(self.n_units, self.fraction, len(self.epochs), i, pruned)
            if k > 0:
                out[epoch] = k
                pruned += k
        return out
