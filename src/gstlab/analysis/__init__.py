"""Analysis of runs and studies: per-run summaries, study tables, statistics, figures and reports.

``load_study`` is imported lazily, so that ``gstlab.analysis.summary`` (used by every run) does not pull in
pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gstlab.analysis.results import load_study

__all__ = ["load_study"]


def __getattr__(name: str):
    if name == "load_study":
        from gstlab.analysis.results import load_study

        return load_study
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
