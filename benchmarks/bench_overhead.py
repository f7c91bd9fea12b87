"""Overhead of gstlab's training epoch (masks re-applied after every step, hooks, device-side accumulation)
against a plain PyTorch loop over the same model, data and batch order, in one run.

Each variant runs in its own subprocess (so peak memory is its own), alternating A/B for ``--repeats``
rounds; we report medians of epoch time and the ratio gstlab / plain, plus peak resident memory.
Both loops start from the same model with 50% of conv5-7 and 90% of conv8 pruned (zero); gstlab re-applies
the masks after every step, the plain loop does not.

    python benchmarks/bench_overhead.py            # ~2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from gstlab.pruning.masks import UnitMasks


def build(width: float, n: int, seed: int = 0):
    from gstlab.config import ModelConfig
    from gstlab.models import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="vgg11_bn", width=width), (1, 32, 32), 10)
    x = torch.randn(n, 1, 32, 32)
    y = torch.randint(0, 10, (n,))
    return model, x, y


def plain_epoch(model, opt, x, y, batch: int, order: torch.Tensor) -> float:
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros(())
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
    loss_sum.item()
    return time.perf_counter() - t0


def gstlab_epoch(trainer) -> float:
    t0 = time.perf_counter()
    trainer.train_epoch()
    return time.perf_counter() - t0


class _FixedOrder:
    """The same batches as the plain loop (the benchmark isolates the training step, not the shuffling)."""

    def __init__(self, x, y, batch, order):
        self.x, self.y, self.batch, self.order = x, y, batch, order

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def __iter__(self):
        for i in range(0, len(self.x), self.batch):
            idx = self.order[i:i + self.batch]
            yield self.x[idx], self.y[idx]


def pruned(model: torch.nn.Module, opt: torch.optim.Optimizer) -> UnitMasks:
    """50% of conv5-7 and 90% of conv8 pruned: their weights, BN and optimizer state zeroed. The plain loop
    trains this same model without re-applying the masks (its dead units may regrow); gstlab keeps them dead."""
    from gstlab.pruning.masks import UnitMasks

    masks = UnitMasks(model, model.prunable_units())
    for name, frac in (("conv5", 0.5), ("conv6", 0.5), ("conv7", 0.5), ("conv8", 0.9)):
        masks.prune(name, torch.arange(int(frac * masks.mask(name).numel())), opt)
    return masks


def worker(variant: str, width: float, n: int, batch: int, epochs: int) -> dict:
    torch.set_num_threads(2)
    model, x, y = build(width, n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    masks = pruned(model, opt)  # both loops start from the same weights, pruned units zero
    if variant == "plain":
        times = [plain_epoch(model, opt, x, y, batch, order) for _ in range(epochs)]
    else:
        from gstlab.runner import _MaskHook
        from gstlab.train import Trainer

        trainer = Trainer(model=model, optimizer=opt, train_batches=_FixedOrder(x, y, batch, order),
                          eval_data=(x[:batch], y[:batch]), eval_batch_size=batch, hooks=[_MaskHook(masks)])
        times = [gstlab_epoch(trainer) for _ in range(epochs)]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "times": times[1:] if len(times) > 1 else times, "peak_mib": peak_kib / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--n", type=int, default=2048, help="training images per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per subprocess (the first is warm-up)")
    ap.add_argument("--repeats", type=int, default=5, help="A/B rounds")
    ap.add_argument("--worker", choices=("plain", "gstlab"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.width, args.n, args.batch, args.epochs)))
        return
    results: dict[str, dict[str, list[float]]] = {"plain": {"t": [], "m": []}, "gstlab": {"t": [], "m": []}}
    for r in range(args.repeats):
        for variant in (("plain", "gstlab") if r % 2 == 0 else ("gstlab", "plain")):
            cmd = [sys.executable, __file__, "--worker", variant, "--width", str(args.width), "--n", str(args.n),
                   "--batch", str(args.batch), "--epochs", str(args.epochs)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            results[variant]["t"].extend(out["times"])
            results[variant]["m"].append(out["peak_mib"])
    t_plain, t_gst = (statistics.median(results[v]["t"]) for v in ("plain", "gstlab"))
    m_plain, m_gst = (statistics.median(results[v]["m"]) for v in ("plain", "gstlab"))
    print(f"VGG11-bn width {args.width}, {args.n} images of 1x32x32, batch {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} A/B rounds\n")
    print("| loop | median epoch time (s) | peak RSS (MiB) |")
    print("| --- | --- | --- |")
    print(f"| plain PyTorch | {t_plain:.3f} | {m_plain:.0f} |")
    print(f"| gstlab (masks active) | {t_gst:.3f} | {m_gst:.0f} |")
    print(f"| **ratio** | **{t_gst / t_plain:.3f}x** | **{m_gst / m_plain:.3f}x** |")


if __name__ == "__main__":
    main()
