"""Adaptive worst-case sharpness (Kwon et al. 2021, "ASAM"; Andriushchenko et al., "A Modern Look at the
Relationship between Sharpness and Generalization", ICML 2023: their adaptive l2 m-sharpness, which they find
correlates poorly with generalization), measured with every flatness probe when ``probes.sharpness`` is set (and
by ``gst flatness --sharpness``):

    sharpness = mean over batches B of  max_{||γ||_2 <= ρ}  L_B(w + |w| ⊙ γ) - L_B(w)

L_B: mean cross-entropy on batch B (eval mode, fp32) of the first ``probes.sharpness_samples`` training examples
split into batches of ``probes.sharpness_batch`` (Andriushchenko et al.: 1,024 examples, m = 128; a shorter
last batch weighs by its size); ρ:
``probes.sharpness_rho``; w: the surviving trainable parameters (a pruned entry has |w| = 0 and cannot move,
nor can any weight that is exactly 0). Scaling the perturbation by |w| makes the measure invariant to rescaling a
ReLU network's layers without changing its function, which Hessian eigenvalues are not (Dinh et al. 2017).

The maximum is searched by projected gradient ascent on γ from ``probes.sharpness_restarts`` random points of the
sphere ||γ|| = ρ (seeded; one by default): ``probes.sharpness_steps`` steps γ <- Π(γ + ρ g/||g||), g the gradient
of L_B with respect to γ, Π the projection onto the ball; each batch's value is the largest loss increase seen over
its starts, a lower bound of the maximum (as every ascent gives; one start can end at a local maximum of the
sphere: on tiny networks a review found 0.78-1.00 of the best of 40 optimizer starts; more starts can only raise
it, since the first start is the one a single-start measurement makes), inf where a perturbed loss is not finite,
NaN where the loss at w is (no value: reports count such runs).
For a quadratic loss at its minimum the maximum is ρ²/2 · λ_max(D H D), D = diag|w|, and for a linear loss
ρ ||w ⊙ ∇L||; both are tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gstlab.curvature import HessianOperator, LossFn, loss_and_fraction_correct
from gstlab.seeding import derive_seed


def worst_case_increase(op: HessianOperator, rho: float, steps: int,
                        starts: torch.Generator | Sequence[torch.Generator]) -> tuple[float, float]:
    """(largest increase of ``op``'s loss found over w + |w| ⊙ γ with ||γ||_2 <= ``rho``, the loss at w): projected
    normalized gradient ascent from one random start per generator in ``starts``; inf where a perturbed loss is
    not finite (the sharpest there is), NaN where the loss at w is; the parameters are restored exactly
    afterwards."""
    generators = [starts] if isinstance(starts, torch.Generator) else list(starts)
    saved = [p.detach().clone() for p in op.params]
    scale = op.params_to_flat(saved).double().abs()
    base, _ = loss_and_fraction_correct(op.model, op.loss_fn, op.x, op.y, op.batch_size)
    if not math.isfinite(base):
        return math.nan, base  # no value: not the sharpest either
    best = base
    try:
        for generator in generators:
            found = _ascend(op, saved, scale, rho, steps, generator)
            if not math.isfinite(found):
                return math.inf, base
            best = max(best, found)
    finally:
        with torch.no_grad():
            for p, w in zip(op.params, saved):
                p.copy_(w)
    return best - base, base


def _ascend(op: HessianOperator, saved: list[Tensor], scale: Tensor, rho: float, steps: int,
            generator: torch.Generator) -> float:
    """The largest loss seen on one ascent from a random point of the sphere drawn by ``generator`` (inf once a
    perturbed loss is not finite); leaves the parameters perturbed."""
    start = torch.randn(op.dim, generator=generator, dtype=torch.float64).to(scale.device)
    gamma = rho * start / start.norm()
    best = -math.inf
    for step in range(steps + 1):
        _move(op, saved, scale * gamma)
        loss, grad = op.loss_and_grad()
        if not math.isfinite(loss):
            return math.inf
        best = max(best, loss)
        ascent = scale * grad
        norm = ascent.norm()
        if step == steps or not torch.isfinite(norm) or norm == 0:
            break
        gamma = gamma + rho * ascent / norm
        length = float(gamma.norm())
        if length > rho:
            gamma = gamma * (rho / length)
    return best


@torch.no_grad()
def _move(op: HessianOperator, saved: list[Tensor], delta: Tensor) -> None:
    """Set the parameters to ``saved`` + the flat surviving vector ``delta``."""
    for p, w, d in zip(op.params, saved, op.flat_to_params(delta)):
        p.copy_(w + d)


def adaptive_sharpness(model: nn.Module, loss_fn: LossFn, x, y, rho: float, steps: int, batch: int,
                       eval_batch_size: int, seed: int, param_masks: dict[str, Tensor] | None = None,
                       restarts: int = 1) -> dict:
    """The probe row's sharpness entries: the mean over batches of ``batch`` examples of their worst-case increase
    from ``restarts`` starts (``sharpness``) and of their loss at w (``sharpness_loss``). Start r of every batch
    comes from its own seeded stream, the first from ``seed`` itself: a single-start measurement's starts."""
    generators = [torch.Generator().manual_seed(seed if r == 0 else derive_seed(seed, f"sharpness start {r}"))
                  for r in range(restarts)]
    increases, losses, sizes = [], [], []
    for start in range(0, len(y), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        op = HessianOperator(model, loss_fn, xb, yb, param_masks, eval_batch_size)
        increase, base = worst_case_increase(op, rho, steps, generators)
        increases.append(increase)
        losses.append(base)
        sizes.append(len(yb))
    n = sum(sizes)  # batches weigh by their size (equal but for a shorter last one)
    return {"sharpness": sum(v * size for v, size in zip(increases, sizes)) / n,
            "sharpness_loss": sum(v * size for v, size in zip(losses, sizes)) / n}
