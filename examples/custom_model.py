"""Prune a model that is not in the zoo, on in-memory tensors, through the Python API (gstlab.api.run).

    python examples/custom_model.py [RUN_DIR]

A small CNN and a 4-class image task are defined here; gstlab trains the CNN while pruning its two conv layers
on the config's schedule (Prune_L: the largest-L2 filters), records each pruning event, and writes the run
directory as `gst run` does. Run it twice: the second call finds the finished run and only returns its
summary. About 4 seconds of CPU time (one core).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from gstlab import api


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def make_data(n_train: int = 512, n_test: int = 256, seed: int = 0):
    """12x12 noisy images; class k has a bright 6x6 patch in quadrant k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % 4
    x = 0.5 * torch.randn(n_train + n_test, 1, 12, 12, generator=g)
    for k in range(4):
        r, c = 6 * (k // 2), 6 * (k % 2)
        x[y == k, :, r:r + 6, c:c + 6] += 1.0
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


CONFIG = {
    "optim": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 6, "batch_size": 64},
    "pruning": {"criterion": "l2", "side": "largest", "period": 1,
                "layers": [{"name": "conv1", "fraction": 0.5, "start": 1, "end": 4},
                           {"name": "conv2", "fraction": 0.5, "start": 1, "end": 4}]},
}


def main(out: str = "runs/custom_cnn", progress: bool = False) -> dict:
    torch.manual_seed(0)
    summary = api.run(CONFIG, out, model=SmallCNN(), data=make_data(), progress=progress)
    print(f"{out}: {summary['status']}, {summary['n_events']} pruning events, best test accuracy "
          f"{summary['best_test_acc']:.1f}%, mean stability {summary['mean_stability']:.2f}%, "
          f"{summary['params_remaining']}/{summary['params_total']} parameters left")
    return summary


if __name__ == "__main__":
    main(*sys.argv[1:2], progress=sys.stdout.isatty())
