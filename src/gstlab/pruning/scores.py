"""Per-unit scores (docs/paper.md#scores): pure functions of weights, plus the activation tracker."""

from __future__ import annotations

import torch
from torch import nn

from gstlab.models.units import PrunableUnit

SQRT2 = 2.0**0.5


def l1(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().flatten(1).sum(1)


def l2(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1).norm(dim=1)


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / (2 * torch.pi) ** 0.5


def _big_phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / SQRT2)


TAIL = 5.0  # alpha above which E[BN] is computed in its stable form (below it: the official form, bit for bit)


def _expected_relu(beta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The official computation: alpha = -beta/w, Z = 1 - Phi(alpha), E = Z * (beta + phi(alpha)/Z * w).

    Edge cases as the official code: Z == 0 -> E = 0 (truncated mean set to 0); Z NaN (gamma = beta = 0)
    -> E = 0. With gamma = 0 and beta != 0, alpha = -/+inf: beta > 0 gives Z = 1 and E = beta (= ReLU(beta));
    beta < 0 gives Z = 0 and E = 0 (= ReLU(beta)); so gamma = 0 yields ReLU(beta), the correct expectation.
    """
    b, w = beta.double(), w.double()
    with torch.no_grad():
        alpha = -b / w
        z = 1 - _big_phi(alpha)
        phi = torch.where(torch.isfinite(alpha), _phi(alpha), torch.zeros_like(alpha))
        trunc = torch.where(z == 0, torch.zeros_like(b), b + phi / z * w)
        e = z * trunc
        # Far in the left tail 1 - Phi(alpha) cancels (alpha > ~6: wrong digits, then negative values); there the
        # same E = w * (phi(alpha) - alpha * (1 - Phi(alpha))) is computed with erfc, which keeps its digits.
        tail = torch.isfinite(alpha) & (alpha > TAIL)
        e = torch.where(tail, w * (phi - alpha * 0.5 * torch.erfc(alpha / SQRT2)), e)
        return torch.where(torch.isnan(e), torch.zeros_like(e), e).to(beta.dtype)


def ebn(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """E[ReLU(X)], X ~ N(beta, gamma^2) = beta*Phi(beta/|gamma|) + |gamma|*phi(beta/|gamma|)."""
    return _expected_relu(beta, gamma.abs())


def ebn_signed(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The official EBN_alt: the same formula with signed gamma (not an expectation when gamma < 0)."""
    return _expected_relu(beta, gamma)


def random_scores(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def _unit_axis(model: nn.Module, unit: PrunableUnit, dims: dict[str, int]) -> int | None:
    """The axis of the unit's activation that holds its units (None: the last): as the data-flow trace saw it
    (``dims``: unit name -> axis), else 1 for a normalization's channels and a Conv's, last for a Linear's."""
    if unit.name in dims:
        return dims[unit.name]
    if isinstance(model.get_submodule(unit.activation_module), nn.modules.batchnorm._NormBase):
        return 1
    return None if isinstance(model.get_submodule(unit.module), nn.Linear) else 1


class ActivationTracker:
    """EMA of per-channel sum over (batch, H, W) of |activation| (docs/paper.md#scores), on every ``every``-th
    training batch, counted from 1 over the whole run as the official counter (batches every, 2*every, ...;
    0-based indices every-1, 2*every-1, ...): ``s <- m*s + (1-m)*new``, starting at 0.

    ``step()`` is the training loop's per-batch hook (``before_batch``); forward hooks act only in train mode
    and only on counted batches, and stay on the device (no synchronization).
    """

    def __init__(self, model: nn.Module, units: list[PrunableUnit], every: int = 10, momentum: float = 0.9,
                 dims: dict[str, int] | None = None) -> None:
        self.every, self.momentum = every, momentum
        self.batch = -1
        self._scores: dict[str, torch.Tensor] = {}
        self._handles = []
        for unit in units:
            module = model.get_submodule(unit.activation_module)
            axis = _unit_axis(model, unit, dims or {})
            self._handles.append(module.register_forward_hook(self._hook(unit.name, axis)))

    def _hook(self, name: str, unit_axis: int | None):
        # Not traced by torch.compile: its branch on the Python batch counter would recompile the model on every
        # batch until dynamo gives up compiling (8 graphs), losing CUDA graphs silently.
        @torch.compiler.disable
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not module.training or (self.batch + 1) % self.every != 0:
                return
            axis = output.dim() - 1 if unit_axis is None else unit_axis
            dims = [d for d in range(output.dim()) if d != axis]
            new = output.detach().abs().sum(dim=dims, dtype=torch.float32)  # bf16 under autocast: sum in fp32
            old = self._scores.get(name)
            old = torch.zeros_like(new) if old is None else old.to(new.device)  # restored from a checkpoint: CPU
            self._scores[name] = self.momentum * old + (1 - self.momentum) * new

        return hook

    def before_batch(self) -> None:
        self.batch += 1

    def after_step(self) -> None:
        pass

    step = before_batch

    def scores(self, name: str) -> torch.Tensor:
        if name not in self._scores:
            raise RuntimeError(f"no activation recorded yet for {name!r} (train at least one batch first)")
        return self._scores[name]

    def state_dict(self) -> dict:
        return {"batch": self.batch, "scores": {k: v.cpu() for k, v in self._scores.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.batch = int(state["batch"])
        device_of = {k: v.device for k, v in self._scores.items()}
        self._scores = {k: v.to(device_of.get(k, v.device)) for k, v in state["scores"].items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
