"""The training pass and the evaluation pass, kept small. The epoch around them (train -> evaluate -> event ->
evaluate -> callbacks -> record) is ``runner.run_epoch``.

Everything that is not plain training is a hook (per batch) or a callback (per epoch) with an explicit
schedule: masks are re-applied after each optimizer step, activation scores and interventions act before
each training batch, pruning/intervention events and flatness probes run at scheduled epochs.
Accuracies and losses are accumulated on the device and synchronized once per pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class BatchHook(Protocol):
    """Per-batch hook of the training pass (``before_batch`` before the forward, ``after_step`` after it)."""

    def before_batch(self) -> None: ...

    def after_step(self) -> None: ...


@dataclass
class Pass:
    """Accuracy (%) and mean loss of one pass over a data set; ``pred``: the predicted class of every example,
    when the evaluation was asked for it (event epochs: per-class recall and prediction flips)."""

    acc: float
    loss: float
    pred: torch.Tensor | None = None


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_batches: Iterable[tuple[torch.Tensor, ...]]  # (x, y) or (x, y, example indices)
    eval_data: tuple[torch.Tensor, torch.Tensor]  # x may be a gstlab.data.Images (decoded per batch)
    eval_batch_size: int
    autocast: Callable[[], AbstractContextManager] = field(default=lambda: torch.autocast("cpu", enabled=False))
    hooks: list[BatchHook] = field(default_factory=list)
    eval_hooks: list[Callable[[], None]] = field(default_factory=list)  # compat: before each eval batch
    progress: Callable[[Iterable], Iterable] = field(default=lambda it: it)
    # per training example, whether the last epoch predicted its label (needs batches with indices); None: not kept
    train_hits: torch.Tensor | None = None

    def train_epoch(self) -> Pass:
        """One pass over the training batches in train mode; accuracy is the running mean (paper §2)."""
        self.model.train()
        device = self.eval_data[0].device
        correct = torch.zeros((), device=device)
        loss_sum = torch.zeros((), device=device)
        n = 0
        for x, y, *index in self.progress(self.train_batches):
            for hook in self.hooks:
                hook.before_batch()
            with self.autocast():
                out = self.model(x)
                loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for hook in self.hooks:
                hook.after_step()
            loss_sum += loss.detach().float() * y.numel()
            hits = out.detach().argmax(1) == y
            correct += hits.sum()
            if self.train_hits is not None:
                self.train_hits[index[0]] = hits
            n += y.numel()
        return Pass(acc=100.0 * correct.item() / max(n, 1), loss=loss_sum.item() / max(n, 1))

    @torch.no_grad()
    def evaluate(self, predictions: bool = False) -> Pass:
        """Top-1 accuracy (%) and mean cross-entropy on the evaluation set, in eval mode, in fp32 whatever the
        training precision (instability is a small difference of two such accuracies)."""
        return evaluate(self.model, *self.eval_data, self.eval_batch_size, before_batch=self.eval_hooks,
                        predictions=predictions)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             autocast: Callable[[], AbstractContextManager] | None = None,
             before_batch: list[Callable[[], None]] = (), predictions: bool = False) -> Pass:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    loss_sum = torch.zeros((), device=x.device)
    preds: list[torch.Tensor] = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        for hook in before_batch:
            hook()
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out = model(xb)
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        pred = out.argmax(1)
        correct += (pred == yb).sum()
        if predictions:
            preds.append(pred)
    model.train(was_training)
    n = max(len(x), 1)
    return Pass(acc=100.0 * correct.item() / n, loss=loss_sum.item() / n,
                pred=torch.cat(preds) if predictions and preds else None)


def diverged(p: Pass) -> bool:
    return not math.isfinite(p.loss)
