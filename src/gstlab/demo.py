"""The README's demo: No Pruning vs Prune_S vs Prune_L on Fashion-MNIST with a narrow VGG11, on a CPU.

The schedule is the paper's VGG schedule (conv5-7 lose 30%, conv8 loses 90%, L2 scores) compressed into a
short run; only the side differs between the two pruned runs, so any difference in stability and accuracy
comes from *which* filters are removed.
"""

from __future__ import annotations

from pathlib import Path

from gstlab import config as C
from gstlab.runner import execute

DEMO_EPOCHS = 16
METHODS = (("No Pruning", None), ("Prune_S", "smallest"), ("Prune_L", "largest"))


def demo_config(side: str | None, seed: int = 0) -> dict:
    cfg = {
        "data": {"name": "fashion_mnist", "train_subset": 10000, "test_subset": 2000},
        "model": {"arch": "vgg11_bn", "width": 0.125},
        "optim": {"name": "adam", "lr": 1e-3, "milestones": [13]},
        "train": {"epochs": DEMO_EPOCHS, "batch_size": 128, "eval_batch_size": 500},
        "seed": seed,
    }
    if side is not None:
        layers = [{"name": n, "fraction": f, "start": s, "end": e}
                  for n, f, s, e in (("conv5", 0.3, 1, 7), ("conv6", 0.3, 1, 7), ("conv7", 0.3, 2, 7),
                                     ("conv8", 0.9, 2, 9))]
        cfg["pruning"] = {"criterion": "l2", "side": side, "period": 2, "layers": layers}
    return cfg


def run_demo(out: Path = Path("runs/demo"), seed: int = 0, progress: bool = True) -> list[tuple[str, dict]]:
    results = []
    for label, side in METHODS:
        cfg = C.parse(demo_config(side, seed), [f"name={label}"])
        results.append((label, execute(cfg, out / label.replace(" ", "_").lower(), progress=progress)))
    return results


def format_table(results: list[tuple[str, dict]]) -> str:
    lines = [f"{'method':12s} {'mean stability':>15s} {'best test acc':>14s} {'final acc':>10s} "
             f"{'gap':>6s} {'params kept':>12s}"]
    for label, s in results:
        kept = s["params_remaining"] / s["params_total"]
        lines.append(f"{label:12s} {s['mean_stability']:14.2f}% {s['best_test_acc']:13.2f}% "
                     f"{s['final_test_acc']:9.2f}% {s['generalization_gap']:6.2f} {kept:11.1%}")
    return "\n".join(lines)
