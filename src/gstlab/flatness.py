"""One flatness measurement of a model (docs/paper.md#flatness): the quantities of Figures 6 and E1-E6 in one row.

Convention (recorded in every row): mean cross-entropy over a fixed probe set (the first ``samples`` evaluation
examples, the paper's 512 test images by default), model in eval mode (BatchNorm running statistics), fp32,
derivatives w.r.t. the surviving parameters only (pruned units' weights, BN affine and biases are excluded).

- ``eig_sum`` (the paper's "sum of the top-100 eigenvalues", Figure 6's curvature axis) and ``eigenvalues``;
- ``grad_moment_trace``: (1/n) sum_i ||grad l_i||^2, the paper's uncentered "gradient covariance trace" on the
  probe set; ``grad_cov_trace`` subtracts ||mean gradient||^2 (the centered covariance);
- ``tic``: grad_moment_trace / eig_sum, the paper's TIC proxy (Figure E5);
- ``hutchinson_trace`` +- ``hutchinson_stderr`` when ``trace_samples`` > 0 (not in the paper);
- eps-flatness: loss and accuracy at w + eps * v_i for the top ``eps_directions`` eigenvectors, eps in
  [-eps_max, eps_max] with step ``eps_step``, on its own evaluation set: the first ``eps_samples`` evaluation
  examples, by default all of them (the paper's full test set); ``delta_w`` = the smallest |eps| whose
  worst-case loss increase (over directions and signs) reaches 0.1 (Figure E3), NaN if none does.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gstlab import curvature
from gstlab.config import ProbeConfig
from gstlab.data.tensor_data import Images

CONVENTION = "mean CE, eval mode, fp32, surviving params, first N eval examples"
POWER_STEPS = 20  # the paper's per-eigenpair cap (hessian-eigenthings power_iter_steps)
DELTA_LOSS = 0.1


class ProbeError(ValueError):
    """The probe cannot be measured as configured (empty probe set, k larger than the surviving parameters)."""


def _probe_set(x: torch.Tensor, y: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    if samples <= 0 or len(x) == 0:
        raise ProbeError(f"probes.samples: the probe set is empty ({samples} of {len(x)} evaluation examples)")
    return x[:samples].float(), y[:samples]


def _sweep_set(x: Images | torch.Tensor, y: torch.Tensor, samples: int | None):
    """The eps-sweep's evaluation set: the first ``samples`` examples (all when None), still encoded."""
    n = len(x) if samples is None else min(samples, len(x))
    if n == len(x):
        return x, y
    return (x.select(slice(0, n)) if isinstance(x, Images) else x[:n]), y[:n]


def spectrum(op: curvature.HessianOperator, cfg: ProbeConfig, gen: torch.Generator) -> tuple:
    """(eigenvalues, eigenvectors, the row's solver entries: converged within ``cfg.max_iter`` steps, and the
    largest Ritz residual relative to its eigenvalue (Lanczos; NaN for power iteration))."""
    info: dict = {}
    if cfg.method == "power":
        values, vectors = curvature.power_iteration(op, cfg.top_k, gen, max_iter=cfg.max_iter or POWER_STEPS,
                                                    info=info)
    else:
        values, vectors = curvature.lanczos(op, cfg.top_k, gen, max_iter=cfg.max_iter, info=info)
    return values, vectors, {"converged": info["converged"], "max_rel_residual": info.get("max_rel_residual",
                                                                                          math.nan)}


def eps_grid(eps_max: float, eps_step: float) -> list[float]:
    """eps = i * eps_step for every i with |eps| <= eps_max (up to rounding of the quotient)."""
    n = math.floor(eps_max / eps_step + 1e-9)
    return [round(i * eps_step, 10) for i in range(-n, n + 1)]


def delta_w(eps_rows: list[dict], base_loss: float, threshold: float = DELTA_LOSS) -> float:
    """Smallest |eps| whose worst-case loss increase over directions and signs is >= threshold (a non-finite
    loss counts as an infinite increase: the model broke there)."""
    worst: dict[float, float] = {}
    for r in eps_rows:
        key = abs(r["eps"])
        increase = r["loss"] - base_loss if math.isfinite(r["loss"]) else math.inf
        worst[key] = max(worst.get(key, -math.inf), increase)
    hits = [e for e, inc in sorted(worst.items()) if inc >= threshold]
    return hits[0] if hits else math.nan


def measure(model: nn.Module, masks, x_eval: torch.Tensor, y_eval: torch.Tensor, cfg: ProbeConfig, seed: int,
            eval_batch_size: int = 256, progress: bool = False) -> tuple[dict, list[dict]]:
    """(curvature row, eps-sweep rows) for ``model`` as it is now; ``masks`` a UnitMasks or None."""
    start = time.perf_counter()
    say = tqdm.write if progress else (lambda _msg: None)
    x, y = _probe_set(x_eval, y_eval, cfg.samples)
    param_masks = masks.param_masks() if masks is not None else None
    gen = torch.Generator().manual_seed(seed)
    op = curvature.HessianOperator(model, F.cross_entropy, x, y, param_masks, batch_size=eval_batch_size)
    if cfg.top_k > op.dim:
        raise ProbeError(f"probes.top_k: {cfg.top_k} eigenvalues asked, but only {op.dim} parameters survive")
    _check_basis_memory(op, cfg)
    _check_finite_loss(model, x, y, eval_batch_size)
    say(f"top-{cfg.top_k} Hessian eigenvalues by {cfg.method} over {op.dim:,} surviving parameters, {len(x)} "
        "probe examples")
    values, vectors, solver = spectrum(op, cfg, gen)
    cap = "" if solver["converged"] else (" (NOT converged: stopped at the step cap, probes.max_iter; the "
                                          "smaller eigenvalues are underestimates)")
    say(f"  {op.n_hvp} Hessian-vector products{cap}; traces and gradient noise")
    row = {"seed": seed, "samples": len(x), "method": cfg.method, "k": cfg.top_k,
           "eig_sum": float(values.sum()), "eig_max": float(values.max()),
           "eigenvalues": " ".join(f"{v:.6g}" for v in values.tolist()), **solver, "convention": CONVENTION}
    row.update(_traces(model, op, x, y, param_masks, cfg, gen, eval_batch_size, row["eig_sum"]))
    x_sweep, y_sweep = _sweep_set(x_eval, y_eval, cfg.eps_samples)
    row["eps_samples"] = len(x_sweep) if cfg.eps_directions > 0 else 0
    eps_rows = _eps_rows(model, op, vectors, x_sweep, y_sweep, cfg, eval_batch_size, progress)
    base = eps_rows[0]["base_loss"] if eps_rows else math.nan
    row["delta_w"] = delta_w(eps_rows, base) if eps_rows else math.nan
    row["n_hvp"] = op.n_hvp
    row["wall_s"] = time.perf_counter() - start
    return row, eps_rows


def _check_basis_memory(op: curvature.HessianOperator, cfg: ProbeConfig) -> None:
    problem = basis_memory_problem(op.dim, cfg, op.device)
    if problem:
        raise ProbeError(problem)


def basis_memory_problem(dim: int, cfg: ProbeConfig, device: torch.device) -> str | None:
    """Lanczos keeps a float64 basis of dim x steps: the one-line refusal of one above half the device's memory
    (a typo in probes.max_iter would exhaust it), else None."""
    if cfg.method != "lanczos":
        return None
    steps = curvature.lanczos_steps(cfg.top_k, dim, cfg.max_iter)
    need = dim * steps * 8
    total = device_memory(device)
    if total and need > total / 2:
        return (f"probes.max_iter: a Lanczos basis of {dim:,} parameters x {steps:,} steps needs "
                f"{need / 2**30:,.1f} GiB, over half of this device's {total / 2**30:,.1f} GiB; allowed: "
                "fewer steps (probes.max_iter; gst flatness --max-iter) or method power")
    return None


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device`` (physical memory for the CPU), 0 where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _check_finite_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    loss, _ = curvature.loss_and_fraction_correct(model, F.cross_entropy, x, y, batch_size)
    if not math.isfinite(loss):
        raise ProbeError(f"the model's loss on the probe set is {loss} (diverged weights?): its flatness cannot be "
                         "measured")


def _traces(model, op, x, y, param_masks, cfg: ProbeConfig, gen, batch_size: int, eig_sum: float) -> dict:
    out = {"hutchinson_trace": math.nan, "hutchinson_stderr": math.nan, "grad_moment_trace": math.nan,
           "grad_cov_trace": math.nan, "tic": math.nan}
    if cfg.trace_samples > 0:
        out["hutchinson_trace"], out["hutchinson_stderr"] = curvature.hutchinson_trace(op, cfg.trace_samples, gen)
    if cfg.grad_moment:
        moment, cov, _ = curvature.per_example_grad_moment(model, F.cross_entropy, x, y, param_masks, batch_size)
        out.update(grad_moment_trace=moment, grad_cov_trace=cov, tic=curvature.tic(moment, eig_sum))
    return out


def _eps_rows(model, op, vectors, x, y, cfg: ProbeConfig, batch_size: int, progress: bool) -> list[dict]:
    n_dirs = min(cfg.eps_directions, vectors.shape[1])
    if n_dirs <= 0:
        return []
    base_loss, _ = curvature.loss_and_fraction_correct(model, F.cross_entropy, x, y, batch_size)
    rows = []
    for i in tqdm(range(n_dirs), desc="eps sweep", unit="direction", disable=not progress, leave=False):
        direction = op.flat_to_params(vectors[:, i].float())
        for r in curvature.eps_sweep(model, F.cross_entropy, x, y, direction, eps_grid(cfg.eps_max, cfg.eps_step),
                                     batch_size):
            rows.append({"direction": i, **r, "base_loss": base_loss})
    return rows
