"""Non-permanent pruning (docs/paper.md#non-permanent-pruning): the same schedule, scores and sides as pruning, but
the targeted units are zeroed or noised for N training batches instead of being removed.

- ``zero``: before each of the next N training batches, the newly targeted units' weights are set to 0;
  afterwards they train again from where those N steps left them (regrowth from zero).
- ``gaussian``: before each of the next N training batches, fresh N(0, sigma) noise is added to the newly
  targeted units' weights (it accumulates, as in the paper). sigma is ``intervention.scale`` or, by the
  paper's rule, the std of the layer's first never-targeted unit, recomputed before each batch.
- ``zero_restore``: all units targeted so far (weights, BN gamma and beta; the bias of a layer without an affine
  BatchNorm, and a non-affine BatchNorm's running mean) are zeroed before each of the next N training batches;
  right after the N-th optimizer step their weights, biases, BN affine parameters and BN running statistics are
  restored bit-exactly (whatever training did to them meanwhile is discarded).

Interventions act only on training batches: evaluations never count towards N and add no perturbation of their
own, so every evaluation and probe sees the model as training left it (during a ``zero`` window that is one
optimizer step from zero; under Gaussian noise, the noise accumulated so far). The event record's ``acc_after``
is measured on the model perturbed by this event's new windows (applied once, evaluated, then undone exactly;
other layers' windows still open are left as they are, as for ``acc_before``), so instability of a
non-permanent event is the same query as for pruning. ``count_eval_batches: true``
reproduces the official code instead: evaluation batches then count towards N and are perturbed too, and
``zero``/``gaussian`` perturb N + 1 passes as the official ``iter_N_*`` (``zero_restore`` N, as ``cumu_N``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gstlab.models.units import PrunableUnit
from gstlab.pruning.pruner import Pruner
from gstlab.train import Pass


@dataclass
class Window:
    """An active intervention on one layer."""

    layer: str
    indices: torch.Tensor  # absolute unit indices
    remaining: int  # training batches still to perturb
    saved: dict[str, torch.Tensor] | None = None  # zero_restore: original values of the targeted slices


class Intervention:
    """Batch hook + pruner action for the configured intervention."""

    def __init__(self, run, units: list[PrunableUnit]) -> None:
        self.run, self.cfg = run, run.cfg.intervention
        self.units = {u.name: u for u in units}
        self.windows: dict[str, Window] = {}
        self.pruner: Pruner | None = None

    # ------------------------------------------------------------------------------------ targeted tensors
    def _weight(self, layer: str) -> torch.Tensor:
        return self.run.model.get_submodule(self.units[layer].module).weight.data

    def _slices(self, layer: str) -> dict[str, torch.Tensor]:
        """The tensors a zero_restore window zeroes (z_*) and restores (all): weight, BN affine and stats; the
        layer's bias where no affine BatchNorm follows it, and a non-affine BatchNorm's running mean (else a zeroed
        unit would still put out its bias, or in eval mode -mean/std: pruning masks the same tensors)."""
        unit = self.units[layer]
        out = {"z_weight": self._weight(layer)}
        bias = self.run.model.get_submodule(unit.module).bias
        bn = self.run.model.get_submodule(unit.bn) if unit.bn is not None else None
        affine = bn is not None and bn.weight is not None
        if not affine and bias is not None:
            out["z_bias"] = bias.data
        if affine:
            out.update(z_gamma=bn.weight.data, z_beta=bn.bias.data)
        if bn is not None and bn.running_mean is not None:
            out.update({"running_mean" if affine else "z_running_mean": bn.running_mean,
                        "running_var": bn.running_var})
        return out

    # ------------------------------------------------------------------------------------------ the action
    def start(self, unit: PrunableUnit, indices: torch.Tensor) -> None:
        """Pruner action: open a window on the units targeted by this event."""
        old = self.windows.pop(unit.name, None)
        if old is not None:
            self._finish(old)
        if self.cfg.kind == "zero_restore":
            indices = torch.nonzero(self.pruner.targeted[unit.name]).flatten()  # all targeted so far
        indices = indices.to(self._weight(unit.name).device)
        window = Window(unit.name, indices, self._passes())
        if self.cfg.kind == "zero_restore":
            window.saved = {k: t[indices].clone() for k, t in self._slices(unit.name).items()}
        if window.remaining > 0 or self.cfg.count_eval_batches:
            self.windows[unit.name] = window

    def _passes(self) -> int:
        """Passes a window perturbs. Official compatibility: ``iter_N_*`` (zero, gaussian) checks its counter
        before incrementing it and perturbs N + 1 passes; ``cumu_N_*_restore`` perturbs N and restores at the
        (N + 1)-th, before it is computed (docs/paper.md#non-permanent-pruning)."""
        iter_variant = self.cfg.count_eval_batches and self.cfg.kind in ("zero", "gaussian")
        return self.cfg.batches + 1 if iter_variant else self.cfg.batches

    @torch.no_grad()
    def _perturb(self, w: Window) -> None:
        if self.cfg.kind == "gaussian":
            weight = self._weight(w.layer)
            sigma = self._sigma(w.layer)
            shape = (len(w.indices), *weight.shape[1:])
            noise = torch.randn(shape, generator=self.run.generators["noise"], dtype=torch.float32)
            weight[w.indices] += sigma * noise.to(weight.device, weight.dtype)
            return
        slices = self._slices(w.layer)
        for name, tensor in slices.items():
            if name == "z_weight" or (self.cfg.kind == "zero_restore" and name.startswith("z_")):
                tensor[w.indices] = 0

    def _sigma(self, layer: str) -> torch.Tensor | float:
        if self.cfg.scale is not None:
            return self.cfg.scale
        untargeted = torch.nonzero(~self.pruner.targeted[layer]).flatten()
        return self._weight(layer)[int(untargeted[0])].std()

    @torch.no_grad()
    def _finish(self, w: Window) -> None:
        if w.saved is not None:
            slices = self._slices(w.layer)
            for name, value in w.saved.items():
                slices[name][w.indices] = value

    # ------------------------------------------------------------------------------------------- counting
    def _count_pass(self) -> None:
        for name, w in list(self.windows.items()):
            if w.remaining <= 0:  # compat mode: the window ends at the pass after the N-th
                self._finish(w)
                del self.windows[name]
                continue
            self._perturb(w)
            w.remaining -= 1

    def before_batch(self) -> None:
        self._count_pass()

    def after_step(self) -> None:
        if self.cfg.count_eval_batches:
            return
        for name, w in list(self.windows.items()):
            if w.remaining <= 0:
                self._finish(w)
                del self.windows[name]

    def before_eval_batch(self) -> None:
        self._count_pass()

    # -------------------------------------------------------------------------------- the event's drop
    @torch.no_grad()
    def measure_after(self, layers: set[str]) -> Pass:
        """Accuracy of the model perturbed as the windows this event opened on ``layers`` perturb it (for Gaussian
        noise: a draw of its own from the run's noise stream, not the one the first training batch will see).
        Other layers' windows still open are not applied: the event's acc_before does not see them either."""
        new = {name: w for name, w in self.windows.items() if name in layers}
        backup = {name: {k: t[w.indices].clone() for k, t in self._slices(name).items()} for name, w in new.items()}
        for w in new.values():
            self._perturb(w)
        result = self.run.trainer.evaluate(predictions=True)  # class detail of the event
        for name, w in new.items():
            slices = self._slices(name)
            for k, value in backup[name].items():
                slices[k][w.indices] = value
        return result

    # --------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        return {name: {"indices": w.indices.cpu(), "remaining": w.remaining, "saved": w.saved}
                for name, w in self.windows.items()}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.run.model.parameters()).device
        self.windows = {
            name: Window(name, s["indices"].to(device), int(s["remaining"]),
                         None if s["saved"] is None else {k: v.to(device) for k, v in s["saved"].items()})
            for name, s in state.items()
        }


def attach_intervention(run, units: list[PrunableUnit]) -> Intervention:
    """Make ``run`` target units on the pruning schedule and intervene on them instead of pruning."""
    iv = Intervention(run, units)
    iv.pruner = Pruner(run.model, units, run.cfg.pruning, run.generators["prune"], iv.start,
                       run.cfg.intervention.kind, run.tracker)
    iv.pruner.duration_batches = run.cfg.intervention.batches
    run.pruner, run.intervention = iv.pruner, iv
    run.trainer.hooks.append(iv)
    if run.cfg.intervention.count_eval_batches:
        run.trainer.eval_hooks.append(iv.before_eval_batch)
    return iv
