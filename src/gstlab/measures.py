"""Generalization measures of a trained model beyond flatness, measured with every flatness probe (and by
``gst flatness``): distance from initialization, prunability (Kuhn et al., "Robustness to Pruning Predicts
Generalization in Deep Neural Networks", 2021), PAC-Bayes flatness (``gstlab.pac_bayes``) and adaptive
worst-case sharpness (``gstlab.sharpness``).

- ``distance_init``: ``||w - w0||_2`` over the surviving parameters (every parameter entry that pruning has not
  removed), ``w0`` the model as ``runner.prepare`` built it from the run's init seed.
- ``prunability``: a fraction of the surviving conv/linear weights that can be kept (the smallest where the
  loss rises monotonically as weights go), removing the rest by global magnitude (smallest ``|w|`` first, ties
  in parameter order) in one shot without retraining, while the training loss stays <= (1 + delta) x the
  unpruned model's. Loss: mean cross-entropy, eval mode, fp32, on the first ``probes.prunability_samples``
  training examples (a fixed subset). Found by bisection on the number of kept weights, exact to one weight
  (the loss need not be monotone in it; bisection returns a count whose loss passes while one weight fewer
  fails).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gstlab.data.tensor_data import Images
from gstlab.pac_bayes import pac_bayes
from gstlab.seeding import derive_seed
from gstlab.train import evaluate


def initial_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s parameters (taken while it is as initialized)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


@torch.no_grad()
def distance_from_init(model: nn.Module, init: dict[str, torch.Tensor],
                       param_masks: dict[str, torch.Tensor] | None = None) -> float:
    """L2 distance between ``model``'s parameters and ``init`` over the surviving entries."""
    masks = param_masks or {}
    total = 0.0
    for name, p in model.named_parameters():
        diff = (p.detach().float() - init[name].to(p.device).float())
        keep = masks.get(name)
        total += float((diff[keep] if keep is not None else diff).pow(2).sum())
    return math.sqrt(total)


class MagnitudePruning:
    """Global magnitude ranks of the surviving conv/linear weights; ``keep(k)`` zeroes all but the k largest."""

    def __init__(self, model: nn.Module, param_masks: dict[str, torch.Tensor] | None = None) -> None:
        masks = param_masks or {}
        self.params = [p for _, p in model.named_parameters() if p.dim() > 1]
        self.saved = [p.detach().clone() for p in self.params]
        keeps = [masks.get(name, torch.ones_like(p, dtype=torch.bool)).to(p.device)
                 for name, p in model.named_parameters() if p.dim() > 1]
        magnitudes = torch.cat([p.detach().abs()[k].flatten() for p, k in zip(self.params, keeps)])
        self.n = magnitudes.numel()
        order = torch.sort(magnitudes, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.n, device=order.device)
        self.ranks, start = [], 0
        for p, k in zip(self.params, keeps):
            r = torch.full(p.shape, self.n, dtype=torch.long, device=p.device)  # removed entries: never ranked
            count = int(k.sum())
            r[k] = rank[start:start + count]
            start += count
            self.ranks.append(r)

    @torch.no_grad()
    def keep(self, k: int) -> None:
        """Keep the ``k`` largest-magnitude surviving weights, zero the others (from the saved values)."""
        for p, saved, r in zip(self.params, self.saved, self.ranks):
            p.copy_(torch.where(r >= self.n - k, saved, torch.zeros_like(saved)))

    def restore(self) -> None:
        self.keep(self.n)


def smallest_passing(n: int, passes: Callable[[int], bool]) -> int:
    """The bisection: the smallest k in [0, n] with ``passes(k)`` if it is monotone (``passes(n)`` is assumed);
    in general a k with ``passes(k)`` and not ``passes(k - 1)``, or 0."""
    if passes(0):
        return 0
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def training_subset(x: Images | torch.Tensor, y: torch.Tensor, samples: int):
    """The first ``samples`` training examples, still encoded."""
    n = min(samples, len(x))
    return (x.select(slice(0, n)) if isinstance(x, Images) else x[:n]), y[:n]


def prunability(model: nn.Module, x, y, delta: float, batch_size: int,
                param_masks: dict[str, torch.Tensor] | None = None) -> dict:
    """``prunability`` (kept fraction), the unpruned ``prunability_loss`` and the loss evaluations made; the
    model is restored exactly afterwards."""
    base = evaluate(model, x, y, batch_size).loss
    if not math.isfinite(base):  # no threshold to stay within (NaN passes nothing, inf everything)
        return {"prunability": math.nan, "prunability_loss": base, "prunability_evals": 0}
    threshold = (1.0 + delta) * base
    pruning = MagnitudePruning(model, param_masks)
    evaluations = 0

    def passes(k: int) -> bool:
        nonlocal evaluations
        evaluations += 1
        pruning.keep(k)
        return evaluate(model, x, y, batch_size).loss <= threshold

    try:
        kept = smallest_passing(pruning.n, passes) if pruning.n else 0
    finally:
        pruning.restore()
    return {"prunability": kept / pruning.n if pruning.n else math.nan, "prunability_loss": base,
            "prunability_evals": evaluations}


def end_measures(model: nn.Module, masks, init: dict[str, torch.Tensor], x_train, y_train, cfg,
                 batch_size: int, probe_seed: int) -> dict:
    """The row entries for one probe: distance from init always, prunability when ``cfg.prunability``, PAC-Bayes
    flatness (its noise drawn from ``probe_seed``'s "pac_bayes" stream) when ``cfg.pac_bayes``, adaptive
    sharpness (its starts from the "sharpness" stream) when ``cfg.sharpness`` (``cfg``: the run's ProbeConfig;
    ``masks``: UnitMasks or None)."""
    param_masks = masks.param_masks() if masks is not None else None
    row = {"distance_init": distance_from_init(model, init, param_masks)}
    if cfg.prunability:
        x, y = training_subset(x_train, y_train, cfg.prunability_samples)
        row.update(prunability(model, x, y, cfg.prunability_delta, batch_size, param_masks),
                   prunability_delta=cfg.prunability_delta, prunability_samples=len(x))
    if cfg.pac_bayes:
        x, y = training_subset(x_train, y_train, cfg.pac_bayes_samples)
        seed = derive_seed(probe_seed, "pac_bayes")
        row.update(pac_bayes(model, x, y, cfg.pac_bayes_drop, cfg.pac_bayes_draws, batch_size, seed, param_masks),
                   pac_bayes_drop=cfg.pac_bayes_drop, pac_bayes_draws=cfg.pac_bayes_draws,
                   pac_bayes_samples=len(x))
    if cfg.sharpness:
        import torch.nn.functional as F  # noqa: PLC0415

        from gstlab.sharpness import adaptive_sharpness  # noqa: PLC0415 (curvature code loads only when probing)

        x, y = training_subset(x_train, y_train, cfg.sharpness_samples)
        row.update(adaptive_sharpness(model, F.cross_entropy, x, y, cfg.sharpness_rho, cfg.sharpness_steps,
                                      cfg.sharpness_batch, batch_size, derive_seed(probe_seed, "sharpness"),
                                      param_masks, cfg.sharpness_restarts),
                   sharpness_rho=cfg.sharpness_rho, sharpness_steps=cfg.sharpness_steps, sharpness_samples=len(x),
                   sharpness_batch=cfg.sharpness_batch, sharpness_restarts=cfg.sharpness_restarts)
    return row
