"""PAC-Bayes flatness (Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020: their
``pacbayes.flatness`` and ``pacbayes.mag.flatness``, the flatness measures that predicted generalization best
there), measured with every flatness probe when ``probes.pac_bayes`` is set (and by ``gst flatness --pac-bayes``).

- ``pac_bayes_sigma``: the largest σ such that Gaussian noise ``u ~ N(0, σ² I)`` added to the trained weights
  lowers the mean training accuracy (over ``probes.pac_bayes_draws`` draws of u) by at most
  ``probes.pac_bayes_drop`` points (Jiang et al.: 0.1 of accuracy, 10 points); ``pac_bayes_flatness = 1/σ²``
  (larger: sharper).
- ``pac_bayes_mag_sigma`` and ``pac_bayes_mag_flatness``: the same with magnitude-aware noise,
  ``u_i ~ N(0, σ² w_i² + ε²)``, ε = 10⁻³ (Jiang et al.), so σ is relative to each weight's size.

Noise goes on every trainable parameter's surviving entries (a pruned entry stays removed); buffers (BatchNorm
statistics) are kept. Accuracy: eval mode, fp32, on the first ``probes.pac_bayes_samples`` training examples. The
draws are fixed for the whole search (common random numbers: draw m is the same standard normal vector z_m at
every σ, scaled; drawn once and kept on the model's device when the M draws fit in 2 GiB, on a GPU also in a
quarter of its free memory), so the estimated
accuracy is one deterministic function of σ. σ is found by doubling or halving
from 0.05, then bisection in log σ to 1% (as prunability's bisection, a σ that passes with the next larger one
failing, where accuracy is not monotone in σ); the drop is compared in correct counts, so an exact tie passes. A
model whose accuracy never drops that far (every doubling up to 2¹⁰ passes, the last 0.05 · 2¹⁴ = 819.2: at chance
level, say) has σ = inf and flatness 0; one that no halving down to 2⁻³⁰ keeps within the drop has σ = 0 and
flatness inf (reports leave it out of correlations and count it in a note).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gstlab.train import evaluate

MAG_EPS = 1e-3  # ε of the magnitude-aware noise (Jiang et al.)
START_SIGMA = 0.05
MIN_SIGMA, MAX_SIGMA = 2.0 ** -30, 2.0 ** 10
REL_TOL = 0.01  # the search stops when its bracket [lo, hi] has hi / lo <= 1 + REL_TOL
CACHE_BYTES = 2 ** 31  # the noise draws are kept on the model's device up to this size (NoiseDraws) ...
CACHE_GPU_SHARE = 4  # ... and on a GPU up to 1/4 of its free memory


def largest_passing_sigma(passes: Callable[[float], bool], start: float = START_SIGMA) -> float:
    """The largest σ with ``passes(σ)`` where it is monotone (else one that passes with a larger one, within
    ``REL_TOL``, failing): doubling or halving from ``start``, then bisection in log σ. 0 when no halving down to
    ``MIN_SIGMA`` passes, inf when every doubling up to ``MAX_SIGMA`` does."""
    lo, hi = start, start
    if passes(start):
        while (hi := lo * 2) <= MAX_SIGMA and passes(hi):
            lo = hi
        if hi > MAX_SIGMA:
            return math.inf
    else:
        while (lo := hi / 2) >= MIN_SIGMA and not passes(lo):
            hi = lo
        if lo < MIN_SIGMA:
            return 0.0
    while hi / lo > 1 + REL_TOL:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return lo


class NoiseDraws:
    """Draw m's standard normal vectors, one per trainable parameter of ``model``: from a CPU generator seeded
    ``seed + m``, so they are the same at every σ and on every device. Kept on the parameters' device once drawn
    when all ``draws`` of them fit in ``cache_bytes`` (default ``cache_budget``), else drawn anew at each use: on
    a GPU a CPU draw of a paper-scale model costs ~20 evaluations of the subset (docs/decisions.md)."""

    def __init__(self, model: nn.Module, seed: int, draws: int, cache_bytes: int | None = None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.seed = seed
        size = draws * sum(p.numel() * p.element_size() for p in self.params)
        if cache_bytes is None:
            cache_bytes = cache_budget(self.params[0].device) if self.params else 0
        self.cache: dict[int, list[torch.Tensor]] | None = {} if size <= cache_bytes else None

    def __call__(self, draw: int) -> list[torch.Tensor]:
        if self.cache is not None and draw in self.cache:
            return self.cache[draw]
        gen = torch.Generator().manual_seed(self.seed + draw)
        z = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype) for p in self.params]
        if self.cache is not None:
            self.cache[draw] = z
        return z


def cache_budget(device: torch.device) -> int:
    """Bytes of noise draws ``NoiseDraws`` keeps on ``device``: ``CACHE_BYTES``, on a GPU at most a
    ``CACHE_GPU_SHARE``-th of its free memory (an in-run probe shares it with training and other packed runs)."""
    if device.type == "cuda":
        return min(CACHE_BYTES, torch.cuda.mem_get_info(device)[0] // CACHE_GPU_SHARE)
    return CACHE_BYTES


class Perturbation:
    """Puts ``σ``-scaled noise draw ``m`` (``normals(m)``) on ``model``'s trainable parameters (their surviving
    entries) and takes it off again."""

    def __init__(self, model: nn.Module, param_masks: dict[str, torch.Tensor] | None, normals: NoiseDraws,
                 magnitude: bool) -> None:
        masks = param_masks or {}
        self.params = [(p, masks.get(name)) for name, p in model.named_parameters() if p.requires_grad]
        self.saved = [p.detach().clone() for p, _ in self.params]
        self.normals, self.magnitude = normals, magnitude

    @torch.no_grad()
    def apply(self, sigma: float, draw: int) -> None:
        for (p, keep), w, z in zip(self.params, self.saved, self.normals(draw), strict=True):
            scale = torch.sqrt(sigma ** 2 * w.float() ** 2 + MAG_EPS ** 2).to(p.dtype) if self.magnitude else sigma
            noise = z * scale
            if keep is not None:
                noise = noise * keep.to(p.device, p.dtype)
            p.copy_(w + noise)

    @torch.no_grad()
    def restore(self) -> None:
        for (p, _), w in zip(self.params, self.saved):
            p.copy_(w)


def pac_bayes_sigma(model: nn.Module, x, y, drop: float, draws: int, batch_size: int, seed: int,
                    magnitude: bool, param_masks: dict[str, torch.Tensor] | None = None,
                    normals: NoiseDraws | None = None) -> tuple[float, float, int]:
    """(σ, the unperturbed accuracy, accuracy evaluations made); the model is restored exactly afterwards.
    ``normals``: the noise draws (default: drawn from ``seed``; pass one to share its cache between calls)."""
    n = len(y)
    base = evaluate(model, x, y, batch_size).acc
    base_correct = _correct(base, n)
    noise = Perturbation(model, param_masks, normals or NoiseDraws(model, seed, draws), magnitude)
    evaluations = 0

    def passes(sigma: float) -> bool:
        nonlocal evaluations
        correct = 0
        for m in range(draws):
            noise.apply(sigma, m)
            correct += _correct(evaluate(model, x, y, batch_size).acc, n)
        evaluations += draws
        return within_drop(base_correct, correct, draws, n, drop)

    try:
        sigma = largest_passing_sigma(passes)
    finally:
        noise.restore()
    return sigma, base, evaluations


def within_drop(base_correct: int, correct: int, draws: int, n: int, drop: float) -> bool:
    """Whether ``correct`` right predictions summed over ``draws`` evaluations of ``n`` examples lose at most
    ``drop`` accuracy points against ``base_correct``, in counts (in percentages rounding decides exact ties)."""
    return 100 * (draws * base_correct - correct) <= drop * n * draws


def _correct(accuracy: float, n: int) -> int:
    """The count behind ``evaluate``'s accuracy (100 * correct / n)."""
    return round(accuracy * n / 100.0)


def pac_bayes(model: nn.Module, x, y, drop: float, draws: int, batch_size: int, seed: int,
              param_masks: dict[str, torch.Tensor] | None = None) -> dict:
    """The probe row's PAC-Bayes entries: both σ, both flatness values (1/σ²), the unperturbed accuracy and the
    accuracy evaluations made."""
    row: dict = {}
    evaluations = 0
    normals = NoiseDraws(model, seed, draws)  # both variants scale the same draws
    for prefix, magnitude in (("pac_bayes", False), ("pac_bayes_mag", True)):
        sigma, base, made = pac_bayes_sigma(model, x, y, drop, draws, batch_size, seed, magnitude, param_masks,
                                            normals)
        row[f"{prefix}_sigma"] = sigma
        row[f"{prefix}_flatness"] = 1.0 / sigma ** 2 if sigma > 0 else math.inf
        evaluations += made
    return {**row, "pac_bayes_acc": base, "pac_bayes_evals": evaluations}
