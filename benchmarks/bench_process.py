"""Whole-process cost of a run: ``gst run`` (a subprocess) against a plain hand-written PyTorch loop (another
subprocess) training the same model on the same data for the same epochs, in one benchmark run.

The config is explicit (it does not depend on any preset scale): Fashion-MNIST, 8,000 training images (the
seeded subset), the first 5,000 test images, VGG11-bn width 1/8, Adam 1e-3, batch 128, evaluation batch 256,
``--epochs`` epochs, ``--threads`` torch threads, CPU. The plain loop reads the IDX files with numpy, keeps the
subset as normalized, padded float32 tensors, and per epoch trains and evaluates once on the test set. Peak
memory is each child's ``ru_maxrss`` (from ``os.wait4``), time its wall and CPU (user + system) time; the two
alternate for ``--repeats`` rounds and we report medians and the ratio gstlab / plain.

    python benchmarks/bench_process.py            # ~5 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def run_config(epochs: int, threads: int, root: Path) -> dict:
    return {
        "data": {"name": "fashion_mnist", "root": str(root), "train_subset": 8000, "test_subset": 5000},
        "model": {"arch": "vgg11_bn", "width": 0.125},
        "optim": {"name": "adam", "lr": 0.001},
        "train": {"epochs": epochs, "batch_size": 128, "eval_batch_size": 256, "device": "cpu",
                  "threads": threads, "progress": False},
        "seed": 0,
    }


def _idx(path: Path):
    import numpy as np

    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _images(root: Path, split: str, keep):
    import torch
    import torch.nn.functional as F

    name = next(p for p in (root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-images-idx3-ubyte")
                if p.exists())
    x = torch.from_numpy(_idx(name)[keep].copy()).float().div(255).sub(MEAN).div(STD)
    y = torch.from_numpy(_idx(name.with_name(name.name.replace("images-idx3", "labels-idx1")))[keep].astype("int64"))
    return F.pad(x.unsqueeze(1), (2, 2, 2, 2)), y


def plain(epochs: int, threads: int, root: Path) -> None:
    """The hand-written loop: same model, data subset, optimizer and epochs as the gstlab config."""
    import torch
    import torch.nn.functional as F

    from gstlab.config import ModelConfig
    from gstlab.models import build_model
    from gstlab.seeding import derive_seed

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(derive_seed(0, "data"))  # the subset `gst run` draws for the config's seed 0
    keep = torch.randperm(60000, generator=g)[:8000].sort().values.numpy()
    x, y = _images(root, "train", keep)
    xt, yt = _images(root, "t10k", slice(0, 5000))
    model = build_model(ModelConfig(arch="vgg11_bn", width=0.125), (1, 32, 32), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(xt.split(256), yt.split(256)))
        print(f"test acc {100 * correct / len(xt):.2f}")


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds (user + system), peak RSS MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both processes")
    ap.add_argument("--repeats", type=int, default=5, help="A/B rounds")
    ap.add_argument("--root", type=Path, default=FASHION, help="directory of the Fashion-MNIST IDX files")
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain(args.epochs, args.threads, args.root)
        return
    import yaml

    results: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": [], "peak": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(run_config(args.epochs, args.threads, args.root)))
        commands = {
            "plain": [sys.executable, __file__, "--plain", "--epochs", str(args.epochs), "--threads",
                      str(args.threads), "--root", str(args.root)],
            "gstlab": [sys.executable, "-m", "gstlab.cli", "run", "--config", str(cfg), "--out"],
        }
        for r in range(args.repeats):
            for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                out = [str(Path(tmp) / f"run{r}")] if variant == "gstlab" else []
                row = dict(zip(("wall", "cpu", "peak"), measure(commands[variant] + out)))
                for key, value in row.items():
                    results[variant][key].append(value)
                print(json.dumps({"round": r, "variant": variant, **{k: round(v, 2) for k, v in row.items()}}),
                      file=sys.stderr)
    print(report(results, args))


VARIANTS = ("plain", "gstlab")


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    """Markdown table: medians per process, the ratio of medians and the median of the per-round ratios."""
    med = {v: {k: statistics.median(xs) for k, xs in results[v].items()} for v in VARIANTS}
    paired = {k: statistics.median(g / p for g, p in zip(results["gstlab"][k], results["plain"][k]))
              for k in ("wall", "cpu", "peak")}
    ratio = {k: med["gstlab"][k] / med["plain"][k] for k in ("wall", "cpu", "peak")}
    lines = [f"VGG11-bn width 1/8, Fashion-MNIST 8,000 train / 5,000 test, {args.epochs} epochs, "
             f"{args.threads} thread(s), {args.repeats} A/B rounds (medians)", "",
             "| process | wall time (s) | CPU time (s) | peak RSS (MiB) |", "| --- | --- | --- | --- |",
             f"| plain PyTorch loop | {med['plain']['wall']:.1f} | {med['plain']['cpu']:.1f} | "
             f"{med['plain']['peak']:.0f} |",
             f"| `gst run` | {med['gstlab']['wall']:.1f} | {med['gstlab']['cpu']:.1f} | {med['gstlab']['peak']:.0f} |",
             f"| **ratio of medians gstlab / plain** | **{ratio['wall']:.2f}x** | **{ratio['cpu']:.2f}x** | "
             f"**{ratio['peak']:.2f}x** |",
             f"| median of per-round ratios | {paired['wall']:.2f}x | {paired['cpu']:.2f}x | {paired['peak']:.2f}x |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
