"""Matrix-free curvature tools against dense references on tiny float64 models and operators of known spectrum."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gstlab.curvature import (
    HessianOperator,
    eps_sweep,
    hutchinson_trace,
    lanczos,
    loss_and_fraction_correct,
    per_example_grad_moment,
    power_iteration,
    tic,
)

N_EXAMPLES = 20


class KnownOp:
    """Symmetric operator Q diag(eigs) Q^T with a random orthogonal Q."""

    def __init__(self, eigs: torch.Tensor, seed: int = 0, rotate: bool = True) -> None:
        self.dim, self.n_hvp, self.eigs = len(eigs), 0, eigs.double()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=g, dtype=torch.float64))[0]
        self.q = q if rotate else torch.eye(self.dim, dtype=torch.float64)
        self.matrix = self.q @ torch.diag(self.eigs) @ self.q.T

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return self.matrix @ v


def tiny_mlp(seed: int = 0, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 5)] + ([nn.BatchNorm1d(5)] if batch_norm else []) + [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


def tiny_data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_EXAMPLES, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (N_EXAMPLES,), generator=g)


def hidden_mask(model: nn.Module, dead: list[int]) -> dict[str, torch.Tensor]:
    w = torch.ones_like(model[0].weight, dtype=torch.bool)
    b = torch.ones_like(model[0].bias, dtype=torch.bool)
    w[dead] = False
    b[dead] = False
    return {"0.weight": w, "0.bias": b}


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: dict | None = None) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy, restricted to the surviving entries (row-major per parameter)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    h = torch.autograd.functional.hessian(loss, flat0)
    masks = masks or {}
    keep = torch.cat([masks.get(n, torch.ones(s, dtype=torch.bool)).reshape(-1) for n, s in zip(names, shapes)])
    return h[keep][:, keep]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny problems: thread start-up dominates, so run single-threaded (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    model, (x, y) = tiny_mlp(), tiny_data()
    op = HessianOperator(model, F.cross_entropy, x, y, masks=None, batch_size=7)  # uneven batches on purpose
    return model, x, y, op, dense_hessian(model, x, y)


def top(h: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(h).flip(0)[:k]


def test_matvec_matches_dense(setup):
    _, _, _, op, h = setup
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert op.dim == h.shape[0] == 4 * 5 + 5 + 5 * 3 + 3
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)


def test_float32_model_matvec(setup):
    model, x, y, _, h = setup
    m32 = copy.deepcopy(model).float()
    op = HessianOperator(m32, F.cross_entropy, x.float(), y, batch_size=7)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hv = op.matvec(v)
    assert hv.dtype == torch.float64
    torch.testing.assert_close(hv, h @ v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(op.matvec(v.float()), (h @ v).float(), rtol=1e-5, atol=1e-6)


def test_lanczos_matches_dense(setup):
    _, _, _, op, h = setup
    k, info = 4, {}
    vals, vecs = lanczos(op, k, torch.Generator().manual_seed(0), tol=1e-10, info=info)
    ref = top(h, k)
    assert vals.shape == (k,) and vecs.shape == (op.dim, k)
    assert torch.all(vals[:-1] >= vals[1:])
    torch.testing.assert_close(vals, ref, rtol=1e-4, atol=0)
    torch.testing.assert_close(h @ vecs, vecs * vals, rtol=0, atol=1e-4 * float(ref[0]))  # eigenvectors too
    assert info["iterations"] <= op.dim


def test_power_iteration_matches_dense(setup):
    _, _, _, op, h = setup
    k = 3
    ref = top(h, k)
    evals = torch.linalg.eigvalsh(h)
    assert ref[-1] > evals.abs().flip(0)[k:].max()  # top-k by magnitude = top-k algebraic for this problem
    vals, vecs = power_iteration(op, k, torch.Generator().manual_seed(0), max_iter=5000, tol=1e-12)
    torch.testing.assert_close(vals, ref, rtol=1e-4, atol=0)
    assert vecs.shape == (op.dim, k)


def test_hutchinson_trace_within_stderr(setup):
    _, _, _, op, h = setup
    exact = float(torch.diagonal(h).sum())
    est, stderr = hutchinson_trace(op, 400, torch.Generator().manual_seed(0))
    assert stderr > 0
    assert abs(est - exact) <= 3 * stderr


def test_lanczos_recovers_known_spectrum():
    eigs = torch.tensor([9.0, 7.5, 6.0, -8.0, 3.0, 2.0, 1.0, 0.5, -0.5, 0.0, 0.25, -2.0])
    op = KnownOp(eigs)
    vals, vecs = lanczos(op, 4, torch.Generator().manual_seed(1), max_iter=op.dim)
    torch.testing.assert_close(vals, torch.tensor([9.0, 7.5, 6.0, 3.0], dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(op.matrix @ vecs, vecs * vals, rtol=0, atol=1e-8)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-10)
    assert 0 < op.n_hvp <= op.dim


def test_lanczos_stops_early_and_counts_hvps():
    eigs = torch.cat([torch.tensor([100.0, 50.0]), torch.linspace(0.0, 1.0, 198)])
    op = KnownOp(eigs, rotate=False)
    info = {}
    vals, _ = lanczos(op, 2, torch.Generator().manual_seed(0), tol=1e-8, info=info)
    torch.testing.assert_close(vals, torch.tensor([100.0, 50.0], dtype=torch.float64), rtol=1e-8, atol=0)
    assert info["converged"] and op.n_hvp == info["iterations"] < 2 * 2 + 20


@pytest.mark.parametrize("rotate", [False, True])
def test_lanczos_restarts_on_exhausted_krylov_space(rotate):
    op = KnownOp(torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0]), rotate=rotate)  # a random start spans only 2 dimensions
    vals, vecs = lanczos(op, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(vals, torch.full((3,), 2.0, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)


def test_power_iteration_known_spectrum():
    op = KnownOp(torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1]))
    vals, vecs = power_iteration(op, 2, torch.Generator().manual_seed(0), tol=1e-14)
    torch.testing.assert_close(vals, torch.tensor([10.0, 5.0], dtype=torch.float64), rtol=1e-8, atol=0)
    torch.testing.assert_close(op.matrix @ vecs, vecs * vals, rtol=0, atol=1e-6)


def test_hutchinson_known_operator():
    op = KnownOp(torch.linspace(-1.0, 3.0, 10))
    est, stderr = hutchinson_trace(op, 2000, torch.Generator().manual_seed(0))
    assert abs(est - 10.0) <= 3 * stderr
    diag = KnownOp(torch.linspace(-1.0, 3.0, 10), rotate=False)
    est, stderr = hutchinson_trace(diag, 5, torch.Generator().manual_seed(0))  # z^T D z = tr(D) exactly
    assert est == pytest.approx(10.0) and stderr == pytest.approx(0.0, abs=1e-12)


def test_masked_operator_restricts_to_survivors():
    model, (x, y) = tiny_mlp(), tiny_data()
    masks = hidden_mask(model, dead=[1, 3])
    op = HessianOperator(model, F.cross_entropy, x, y, masks=masks, batch_size=8)
    n_total = sum(p.numel() for p in model.parameters())
    assert op.dim == n_total - 2 * 4 - 2
    h = dense_hessian(model, x, y, masks)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    vals, vecs = lanczos(op, 3, torch.Generator().manual_seed(0), tol=1e-10)
    torch.testing.assert_close(vals, top(h, 3), rtol=1e-4, atol=0)
    for j in range(3):
        w, b, *rest = op.flat_to_params(vecs[:, j])
        assert torch.all(w[~masks["0.weight"]] == 0) and torch.all(b[~masks["0.bias"]] == 0)
        assert [t.shape for t in (w, b, *rest)] == [p.shape for p in model.parameters()]
        torch.testing.assert_close(op.params_to_flat([w, b, *rest]), vecs[:, j])


def test_eval_mode_restored_and_grad(setup):
    model, x, y, _, _ = setup
    model.train()
    model[1].eval()  # mixed modes are restored per module
    op = HessianOperator(model, F.cross_entropy, x, y)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    loss, g = op.loss_and_grad()
    assert model.training and model[0].training and not model[1].training
    assert op.n_hvp == 1
    model.eval()
    ref = F.cross_entropy(model(x), y)
    ref_g = torch.autograd.grad(ref, list(model.parameters()))
    assert loss == pytest.approx(ref.item())
    torch.testing.assert_close(g, op.params_to_flat(ref_g))


def explicit_moment(model, x, y, masks):
    flats = []
    model.eval()
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        flats.append(torch.cat([g[masks[n]] if n in masks else g.reshape(-1)
                                for (n, _), g in zip(model.named_parameters(), grads)]))
    g = torch.stack(flats)
    moment = float(g.square().sum(1).mean())
    mean_sq = float(g.mean(0).square().sum())
    return moment, moment - mean_sq, mean_sq


@pytest.mark.parametrize("batch_norm", [False, True])
def test_per_example_grad_moment_matches_loop(batch_norm):
    model, (x, y) = tiny_mlp(batch_norm=batch_norm), tiny_data()
    if batch_norm:  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    masks = hidden_mask(model, dead=[0, 2])
    model.train()  # must be switched to eval inside (BN with vmap over single examples)
    got = per_example_grad_moment(model, F.cross_entropy, x, y, masks, batch_size=6)
    assert model.training
    ref = explicit_moment(model, x, y, masks)
    for a, b in zip(got, ref):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12)
    assert got[1] >= 0 and got[0] >= got[1]


def test_tic():
    assert tic(2.0, 4.0) == 0.5
    assert tic(1.0, 0.0) != tic(1.0, 0.0)  # nan


def test_eps_sweep_restores_weights(setup):
    model, x, y, op, _ = setup
    before = [p.detach().clone() for p in model.parameters()]
    _, vecs = lanczos(op, 1, torch.Generator().manual_seed(0))
    direction = op.flat_to_params(vecs[:, 0])
    rows = eps_sweep(model, F.cross_entropy, x, y, direction, [0.0, 0.5, -0.5], batch_size=8)
    assert [r["eps"] for r in rows] == [0.0, 0.5, -0.5]
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    base_loss, base_acc = loss_and_fraction_correct(model, F.cross_entropy, x, y, batch_size=8)
    assert rows[0]["loss"] == pytest.approx(base_loss) and rows[0]["acc"] == base_acc
    assert rows[1]["loss"] + rows[2]["loss"] > 2 * rows[0]["loss"]  # positive curvature along the top direction
    with torch.no_grad():
        for p, d in zip(model.parameters(), direction):
            p.add_(0.5 * d)
        expected = loss_and_fraction_correct(model, F.cross_entropy, x, y, batch_size=8)[0]
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    assert rows[1]["loss"] == pytest.approx(expected, rel=1e-12)


def test_seed_determinism_and_k_validation(setup):
    _, _, _, op, _ = setup
    a = lanczos(op, 2, torch.Generator().manual_seed(5))
    b = lanczos(op, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    p1 = power_iteration(op, 2, torch.Generator().manual_seed(5), max_iter=50)
    p2 = power_iteration(op, 2, torch.Generator().manual_seed(5), max_iter=50)
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[1], p2[1])
    assert hutchinson_trace(op, 10, torch.Generator().manual_seed(5)) == hutchinson_trace(
        op, 10, torch.Generator().manual_seed(5))
    for fn in (lanczos, power_iteration):
        with pytest.raises(ValueError):
            fn(op, op.dim + 1, torch.Generator())
        with pytest.raises(ValueError):
            fn(op, 0, torch.Generator())


def test_invalid_masks():
    model, (x, y) = tiny_mlp(), tiny_data()
    with pytest.raises(ValueError):
        HessianOperator(model, F.cross_entropy, x, y, masks={"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError):
        HessianOperator(model, F.cross_entropy, x, y, masks={"0.bias": torch.ones(3, dtype=torch.bool)})
