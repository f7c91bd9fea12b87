"""Symmetric label noise on the training set, and training accuracy split into clean and noisy examples.

A fraction ``p`` of the training examples, exactly ``round(p * N)`` of them drawn without replacement, get a
label drawn uniformly from the *other* classes (``(y + U{1..C-1}) mod C``). The draw comes from the data seed's
own stream, so it depends only on the run's seed and the training subset, never on the model or the order.
On the noisy examples the training accuracy is measured against the *given* (wrong) label: it is the share of
noisy labels the network has memorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gstlab.config import ConfigError
from gstlab.seeding import derive_seed

NOISE_COLUMNS = ("train_acc_clean", "train_acc_noisy")  # metrics.csv columns of a run with label noise
LABEL_COLUMNS = ("index", "label", "given_label")  # label_noise.csv: one row per noisy training example


@dataclass(frozen=True)
class LabelNoise:
    """Which training examples carry a replaced label (index into the training subset as loaded)."""

    noisy: torch.Tensor  # bool (N,)
    clean_labels: torch.Tensor  # (N,)
    given_labels: torch.Tensor  # (N,)

    def split(self, hits: torch.Tensor) -> dict[str, float]:
        return split_accuracy(hits, self.noisy.to(hits.device))

    def rows(self) -> list[dict]:
        index = self.noisy.nonzero().flatten().tolist()
        return [{"index": i, "label": int(self.clean_labels[i]), "given_label": int(self.given_labels[i])}
                for i in index]


def corrupt_labels(y: torch.Tensor, classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(given labels, noisy mask): ``round(fraction * len(y))`` labels replaced by a different class."""
    if classes < 2:
        raise ConfigError(f"data.label_noise: needs at least 2 classes to draw a wrong label, the data has {classes}")
    g = torch.Generator().manual_seed(derive_seed(seed, "label_noise"))
    n = len(y)
    chosen = torch.randperm(n, generator=g)[:round(fraction * n)]
    shift = torch.randint(1, classes, (len(chosen),), generator=g)
    given = y.clone()
    given[chosen] = (y[chosen] + shift.to(y.dtype)) % classes
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[chosen] = True
    return given, noisy


def split_accuracy(hits: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
    """Training accuracy (%) on the clean and on the noisy examples from per-example hits of one epoch (a hit:
    the prediction equals the label the network was given). NaN for an empty group."""
    clean = ~noisy
    return {
        "train_acc_clean": _percent(hits[clean]),
        "train_acc_noisy": _percent(hits[noisy]),
    }


def _percent(hits: torch.Tensor) -> float:
    return 100.0 * int(hits.sum()) / len(hits) if len(hits) else float("nan")
