"""Which units an event prunes (docs/paper.md#selection): Prune_S / Prune_L by score, Prune_R by permutation."""

from __future__ import annotations

import torch


def select_to_prune(scores: torch.Tensor, k: int, side: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask over ``scores`` (the currently unpruned units), True = prune now; exactly ``k`` True.

    smallest/largest: every unit at or beyond the k-th smallest/largest score is flagged and the first k flagged
    (index order) are pruned, as the official code does: the k extreme scores when the cutoff is not tied; with
    ties at the cutoff, a unit strictly beyond it can survive while a tied one is pruned (rare with continuous
    scores). random: the selection made as for ``largest`` (the official default) is permuted with
    ``generator`` -> k uniformly random units.
    """
    n = scores.numel()
    if k > n:
        raise ValueError(f"cannot prune {k} of {n} units")
    prune = torch.zeros(n, dtype=torch.bool)
    if k <= 0:
        return prune
    largest = side != "smallest"
    cutoff = torch.topk(scores, k, largest=largest).values[-1]
    flagged = scores >= cutoff if largest else scores <= cutoff
    prune[torch.nonzero(flagged).flatten()[:k]] = True
    if side == "random":
        prune = prune[torch.randperm(n, generator=generator)]
    return prune
