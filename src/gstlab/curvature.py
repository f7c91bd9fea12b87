"""Matrix-free curvature tools on the *surviving* parameters of a (possibly pruned) model.

Everything works on one flat vector: all ``requires_grad`` parameters in ``named_parameters`` order, where a
parameter named in ``masks`` (name -> bool tensor of its shape, True = surviving) contributes only its surviving
entries. Hessian-vector products use double backward; eigen-solvers (Lanczos, deflated power iteration) and the
Hutchinson trace only need an operator with ``dim``, ``n_hvp`` and ``matvec``. The model is put in eval mode
(BatchNorm running statistics, no dropout) for every measurement and its previous modes are restored afterwards.

``loss_fn(logits, targets)`` must return the *mean* loss of a batch; probe-set values are batch means weighted by
batch size, i.e. the mean over the whole probe set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
_EPS64 = torch.finfo(torch.float64).eps


class LinearOperator(Protocol):
    """What the eigen-solvers and trace estimator need: a symmetric operator on ``dim``-vectors."""

    dim: int
    n_hvp: int

    def matvec(self, v: Tensor) -> Tensor: ...


# ---------------------------------------------------------------------------------------------------- helpers


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own previous mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)


def _trainable(model: nn.Module, masks: dict[str, Tensor] | None) -> tuple[list[str], list[nn.Parameter],
                                                                          list[Tensor | None]]:
    """(names, parameters, bool masks or None) of all ``requires_grad`` parameters, masks validated."""
    masks = masks or {}
    named = dict(model.named_parameters())
    unknown = set(masks) - set(named)
    if unknown:
        raise ValueError(f"masks name unknown parameters: {sorted(unknown)}")
    names, params, keeps = [], [], []
    for name, p in named.items():
        if not p.requires_grad:
            continue
        keep = masks.get(name)
        if keep is not None:
            if keep.shape != p.shape:
                raise ValueError(f"mask for {name} has shape {tuple(keep.shape)}, parameter {tuple(p.shape)}")
            keep = keep.to(device=p.device, dtype=torch.bool)
        names.append(name)
        params.append(p)
        keeps.append(keep)
    return names, params, keeps


def _flatten(tensors: Iterable[Tensor | None], like: Sequence[Tensor], keeps: Sequence[Tensor | None]) -> Tensor:
    """Surviving entries of full-shaped tensors (None = zeros), concatenated."""
    parts = []
    for t, p, keep in zip(tensors, like, keeps):
        t = torch.zeros_like(p) if t is None else t
        parts.append(t[keep] if keep is not None else t.reshape(-1))
    return torch.cat(parts) if parts else like[0].new_zeros(0)


def _scatter(v: Tensor, like: Sequence[Tensor], keeps: Sequence[Tensor | None]) -> list[Tensor]:
    """Flat surviving vector -> full-shaped tensors (dtype/device of ``like``), zeros at masked entries."""
    out, i = [], 0
    for p, keep in zip(like, keeps):
        n = int(keep.sum()) if keep is not None else p.numel()
        chunk = v[i:i + n].to(device=p.device, dtype=p.dtype)
        if keep is None:
            out.append(chunk.reshape(p.shape))
        else:
            full = torch.zeros_like(p)
            full[keep] = chunk
            out.append(full)
        i += n
    if i != len(v):
        raise ValueError(f"vector has {len(v)} entries, expected {i}")
    return out


def _n_surviving(params: Sequence[Tensor], keeps: Sequence[Tensor | None]) -> int:
    return sum(int(k.sum()) if k is not None else p.numel() for p, k in zip(params, keeps))


def _check_k(k: int, dim: int) -> None:
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, dim={dim}], got {k}")


def _random_start(dim: int, generator: torch.Generator, device: torch.device) -> Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64, device=generator.device)
    return (v / v.norm()).to(device)


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """Remove the span of the orthonormal columns of ``basis`` from ``w`` (twice: classical Gram-Schmidt)."""
    if basis.shape[1] == 0:
        return w
    for _ in range(2):
        w = w - basis @ (basis.T @ w)
    return w


# ---------------------------------------------------------------------------------------------------- operator


class HessianOperator:
    """Hessian of the mean probe-set loss w.r.t. the surviving parameters, applied matrix-free."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                 masks: dict[str, Tensor] | None = None, batch_size: int = 256) -> None:
        self.model, self.loss_fn, self.x, self.y, self.batch_size = model, loss_fn, x, y, batch_size
        self.names, self.params, self.keeps = _trainable(model, masks)
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.device = self.params[0].device
        self.dim = _n_surviving(self.params, self.keeps)
        self.n_hvp = 0

    def flat_to_params(self, v: Tensor) -> list[Tensor]:
        """Scatter a flat surviving vector into parameter-shaped tensors, zeros at masked entries."""
        return _scatter(v, self.params, self.keeps)

    def params_to_flat(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Surviving entries of parameter-shaped tensors (e.g. gradients), concatenated; None counts as zeros."""
        return _flatten(tensors, self.params, self.keeps)

    def _batch_grads(self, xb: Tensor, yb: Tensor, create_graph: bool) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        loss = self.loss_fn(self.model(xb), yb)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        return loss, grads

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """(mean probe loss, flat float64 gradient of it w.r.t. the surviving parameters)."""
        total, acc, n = 0.0, torch.zeros(self.dim, dtype=torch.float64, device=self.device), len(self.x)
        with eval_mode(self.model):
            for xb, yb in _batches(self.x, self.y, self.batch_size, self.device):
                loss, grads = self._batch_grads(xb, yb, create_graph=False)
                w = len(xb) / n
                total += float(loss.detach()) * w
                acc += self.params_to_flat(grads).double() * w
        return total, acc

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat surviving vector ``v``; float64 accumulation over batches, returned in ``v``'s dtype."""
        vs = self.flat_to_params(v)
        acc, n = torch.zeros(self.dim, dtype=torch.float64, device=self.device), len(self.x)
        with eval_mode(self.model):
            for xb, yb in _batches(self.x, self.y, self.batch_size, self.device):
                _, grads = self._batch_grads(xb, yb, create_graph=True)
                # only gradients that depend on the parameters carry second-order terms
                live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                if not live:
                    continue
                hv_live = torch.autograd.grad([grads[i] for i in live], self.params,
                                              grad_outputs=[vs[i] for i in live], allow_unused=True)
                acc += self.params_to_flat(hv_live).double() * (len(xb) / n)
        self.n_hvp += 1
        return acc.to(device=v.device, dtype=v.dtype)


# ---------------------------------------------------------------------------------------------------- spectra


def lanczos(op: LinearOperator, k: int, generator: torch.Generator, max_iter: int | None = None,
            tol: float = 1e-6, info: dict | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (largest algebraic) eigenpairs by Lanczos with full reorthogonalization (float64 basis).

    Stops when the top-k Ritz pairs have residual ``|beta_m * s_m| <= tol * |theta|`` (plus a float64 rounding
    floor) or after ``max_iter`` steps (default ``min(dim, max(2k + 20, 3k))``). When the Krylov space is exhausted
    (beta ~ 0: the basis spans an invariant subspace, e.g. an exactly repeated eigenvalue) it restarts from a fresh
    random vector orthogonal to the basis, so missing multiplicities can still be found; the convergence test is
    skipped on such steps. Returns (eigenvalues [k] descending, eigenvectors [dim, k]), both float64; ``info`` (if
    given) receives iterations, converged, the Ritz residuals, the largest residual relative to its Ritz value
    (``max_rel_residual``) and ``ritz_history`` (top-k Ritz values after each
    step m >= k, to measure convergence without re-running).
    """
    dim = op.dim
    _check_k(k, dim)
    m_max = lanczos_steps(k, dim, max_iter)
    if m_max < k:
        raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
    device = getattr(op, "device", torch.device("cpu"))
    basis = torch.zeros(dim, m_max, dtype=torch.float64, device=device)
    alphas, betas = [], []  # betas[j] couples basis vectors j and j + 1
    q, anorm, converged = _random_start(dim, generator, device), 0.0, False
    for j in range(m_max):
        basis[:, j] = q
        w = op.matvec(q).to(torch.float64)
        alpha = float(q @ w)
        w = _orthogonalize(w, basis[:, :j + 1])  # full reorthogonalization also removes alpha q and beta q_prev
        beta = float(w.norm())
        alphas.append(alpha)
        anorm = max(anorm, abs(alpha) + beta + (betas[-1] if betas else 0.0))
        m = j + 1
        theta, s = _ritz(alphas, betas)
        if info is not None and m >= k:
            info.setdefault("ritz_history", []).append(theta[:k].tolist())  # top-k Ritz values after m steps
        exhausted = beta <= 1e3 * _EPS64 * max(anorm, 1e-300)
        if m == m_max:
            break
        if m >= k and not exhausted:
            res = (beta * s[-1, :k]).abs()
            converged = bool((res <= tol * theta[:k].abs() + 1e3 * _EPS64 * anorm).all())
            if converged:
                break
        if exhausted:  # invariant subspace: restart orthogonally to it
            q = _orthogonalize(_random_start(dim, generator, device), basis[:, :m])
            q, beta = q / q.norm(), 0.0
        else:
            q = w / beta
        betas.append(beta)
    vecs = basis[:, :m] @ s[:, :k].to(device)  # the Ritz vectors of T are computed on the CPU
    res = (beta * s[-1, :k]).abs()
    converged = converged or bool((res <= tol * theta[:k].abs() + 1e3 * _EPS64 * anorm).all())
    if info is not None:
        rel = res / theta[:k].abs().clamp_min(torch.finfo(torch.float64).tiny)
        info.update(iterations=m, converged=converged, residuals=res.tolist(), max_rel_residual=float(rel.max()))
    return theta[:k].clone(), vecs


def lanczos_steps(k: int, dim: int, max_iter: int | None = None) -> int:
    """Lanczos' step cap for the top ``k`` of ``dim``: ``max_iter``, by default max(2k + 20, 3k), at most dim."""
    return min(dim, max_iter if max_iter is not None else max(2 * k + 20, 3 * k))


def _ritz(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the tridiagonal T (float64), eigenvalues descending."""
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[:m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    return theta.flip(0), s.flip(1)


def power_iteration(op: LinearOperator, k: int, generator: torch.Generator, max_iter: int = 1000,
                    tol: float = 1e-4, info: dict | None = None) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs by deflated power iteration (as in PyHessian).

    Eigenvector i is power-iterated while orthogonalized against eigenvectors 1..i-1, until the relative change
    of its Rayleigh quotient is below ``tol``. Power iteration finds the largest-*magnitude* eigenvalue of the
    deflated operator, which equals the largest algebraic one when the top of the spectrum dominates (usual for
    trained networks). Returns (eigenvalues [k] sorted descending, eigenvectors [dim, k]), float64; ``info`` (if
    given) receives iterations (all eigenpairs' steps) and converged (every eigenpair met ``tol`` within
    ``max_iter`` steps).
    """
    dim = op.dim
    _check_k(k, dim)
    device = getattr(op, "device", torch.device("cpu"))
    vecs = torch.zeros(dim, 0, dtype=torch.float64, device=device)
    vals, steps, converged = [], 0, True
    for _ in range(k):
        v = _orthogonalize(_random_start(dim, generator, device), vecs)
        v, eig, done = v / v.norm(), None, False
        for _ in range(max_iter):
            steps += 1
            hv = _orthogonalize(op.matvec(v).to(torch.float64), vecs)
            new = float(v @ hv)
            norm = hv.norm()
            if norm == 0:  # v spans the rest of a null space
                eig, done = new, True
                break
            v = hv / norm
            done = eig is not None and abs(new - eig) / (abs(eig) + 1e-6) < tol
            eig = new
            if done:
                break
        converged = converged and done
        vals.append(eig)
        vecs = torch.cat([vecs, v[:, None]], dim=1)
    if info is not None:
        info.update(iterations=steps, converged=converged)
    order = torch.argsort(torch.tensor(vals, dtype=torch.float64), descending=True)
    return torch.tensor(vals, dtype=torch.float64)[order], vecs[:, order.to(device)]


def hutchinson_trace(op: LinearOperator, n_samples: int, generator: torch.Generator) -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean of z^T H z, sample std / sqrt(n))."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    device = getattr(op, "device", torch.device("cpu"))
    samples = []
    for _ in range(n_samples):
        z = torch.randint(0, 2, (op.dim,), generator=generator, device=generator.device).to(device, torch.float64)
        z = 2 * z - 1
        samples.append(float(z @ op.matvec(z).to(torch.float64)))
    est = torch.tensor(samples, dtype=torch.float64)
    stderr = float(est.std() / math.sqrt(n_samples)) if n_samples > 1 else math.nan
    return float(est.mean()), stderr


# ---------------------------------------------------------------------------------------------------- gradient noise


def per_example_grad_moment(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                            masks: dict[str, Tensor] | None = None,
                            batch_size: int = 256) -> tuple[float, float, float]:
    """Gradient-noise traces from per-example gradients of the surviving parameters (vmap over examples).

    Returns (moment_trace, cov_trace, mean_grad_sq): moment_trace = mean_i ||g_i||^2 (trace of the uncentered
    second moment), mean_grad_sq = ||mean_i g_i||^2 and cov_trace = moment_trace - mean_grad_sq (trace of the
    covariance, population normalization).
    """
    names, params, keeps = _trainable(model, masks)
    if not params:
        raise ValueError("model has no trainable parameters")
    trainable = set(names)
    device = params[0].device
    # frozen parameters and buffers are passed as constants
    consts = {n: t.detach() for n, t in model.named_parameters() if n not in trainable}
    consts.update(model.named_buffers())
    theta = {n: p.detach() for n, p in zip(names, params)}

    def loss_one(theta_: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**theta_, **consts}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    sq_sum, g_sum = 0.0, torch.zeros(_n_surviving(params, keeps), dtype=torch.float64, device=device)
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, device):
            g = per_example(theta, xb, yb)
            flat = torch.cat([(g[n][:, k] if k is not None else g[n].flatten(1)).double()
                              for n, k in zip(names, keeps)], dim=1)  # [batch, dim]
            sq_sum += float((flat * flat).sum())
            g_sum += flat.sum(0)
    n = len(x)
    moment = sq_sum / n
    mean_sq = float((g_sum / n).square().sum())
    return moment, moment - mean_sq, mean_sq


def tic(gradient_trace: float, curvature: float) -> float:
    """Takeuchi information criterion, trace-ratio approximation: tr(H^-1 C) ~ tr(C) / tr(H) (nan if the
    curvature is 0). The probes pass the uncentred gradient second moment for tr(C) and the sum of the top-k
    Hessian eigenvalues for tr(H) (docs/decisions.md#flatness-curvaturepy-flatnesspy)."""
    return gradient_trace / curvature if curvature != 0 else math.nan


# ---------------------------------------------------------------------------------------------------- eps-flatness


@torch.no_grad()
def loss_and_fraction_correct(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                              batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy as a fraction in [0, 1]) over (x, y) in eval mode (``train.evaluate``: percent)."""
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, device):
            out = model(xb)
            loss += float(loss_fn(out, yb)) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
    return loss / len(x), correct / len(x)


@torch.no_grad()
def eps_sweep(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, direction_params: list[Tensor],
              eps_values: Iterable[float], batch_size: int) -> list[dict]:
    """Loss and accuracy at ``w + eps * d`` for each eps; weights are restored exactly afterwards.

    ``direction_params`` is aligned with the ``requires_grad`` parameters (e.g. ``HessianOperator.flat_to_params``
    of a unit eigenvector, so masked entries stay zero).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if len(direction_params) != len(params):
        raise ValueError(f"{len(direction_params)} direction tensors for {len(params)} trainable parameters")
    originals = [p.detach().clone() for p in params]
    rows = []
    try:
        for eps in eps_values:
            for p, w0, d in zip(params, originals, direction_params):
                p.copy_(w0 + eps * d.to(device=p.device, dtype=p.dtype))
            loss, acc = loss_and_fraction_correct(model, loss_fn, x, y, batch_size)
            rows.append({"eps": float(eps), "loss": loss, "acc": acc})
    finally:
        for p, w0 in zip(params, originals):
            p.copy_(w0)
    return rows
