"""Training and evaluation throughput of gstlab's fast path against a plain PyTorch loop with a standard
DataLoader, on the same device, model and data, in one run; plus peak memory (on CUDA) and the cost of a pruning event
(two evaluations of the test set) relative to a training epoch.

- plain: CPU-resident uint8->float tensors in a ``TensorDataset`` + ``DataLoader`` (shuffle, ``--workers``
  processes, pinned memory on CUDA), fp32, contiguous layout, per-batch ``.item()`` of the loss (what typical
  training scripts do), crop+flip augmentation on the host;
- gstlab: ``gstlab.train.Trainer`` with the data set on the device, on-device augmentation, bf16 autocast,
  channels_last and a fused Adam on CUDA (fp32/contiguous/foreach on CPU), no per-batch host synchronization;
  optional torch.compile (``--compile``, ``--compile-mode reduce-overhead`` for CUDA graphs).

    python benchmarks/bench_throughput.py --device cuda                       # paper width, CIFAR-sized data
    python benchmarks/bench_throughput.py --device cpu --width 0.125 --n 4096 # a quick CPU check

Prints a markdown table (paste it into benchmarks/README.md with the machine it ran on) and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gstlab.config import ModelConfig, OptimConfig, TrainConfig
from gstlab.data import TrainLoader, augment_batch
from gstlab.environment import cpu_model, resolve_speed
from gstlab.models import build_model
from gstlab.runner import build_optimizer
from gstlab.train import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float | None:
    """Peak memory of the variant just run: CUDA's allocator peak since ``reset_peak``. None on a CPU, where the
    only peak is the process's lifetime RSS, which would charge each variant with all before it
    (bench_process.py compares whole processes' peak RSS instead)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def fake_cifar(n: int, n_test: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.randn(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g))


def model_for(arch: str, width: float, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=width), (3, 32, 32), 10).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def host_augment(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([b[0] for b in batch])
    y = torch.stack([b[1] for b in batch])
    shifts = torch.randint(0, 9, (len(x), 2))
    return augment_batch(x, shifts, torch.rand(len(x)) < 0.5, 4), y


def plain_epoch(model, opt, loader, device) -> float:
    model.train()
    sync(device)
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def plain_eval(model, loader, device) -> float:
    model.eval()
    sync(device)
    start = time.perf_counter()
    correct = 0
    for xb, yb in loader:
        correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    sync(device)
    return time.perf_counter() - start


def timed_gstlab(trainer: Trainer, device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_arch(arch: str, args, data, device) -> dict:
    x, y, xt, yt = data
    pin = device.type == "cuda"
    train_loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True, num_workers=args.workers,
                              pin_memory=pin, collate_fn=host_augment, persistent_workers=args.workers > 0)
    test_loader = DataLoader(TensorDataset(xt, yt), batch_size=256, num_workers=args.workers, pin_memory=pin,
                             persistent_workers=args.workers > 0)
    plain = model_for(arch, args.width, device, channels_last=False)
    opt = torch.optim.Adam(plain.parameters(), 1e-3)
    reset_peak(device)
    plain_train = [plain_epoch(plain, opt, train_loader, device) for _ in range(args.epochs)]
    plain_test = [plain_eval(plain, test_loader, device) for _ in range(args.epochs)]
    plain_mem = peak_mb(device)
    del plain, opt

    speed = resolve_speed(TrainConfig(compile=args.compile, compile_mode=args.compile_mode,
                                      precision=args.precision), device)
    model = model_for(arch, args.width, device, speed.channels_last)
    xd, yd, xtd, ytd = (t.to(device) for t in data)
    if speed.channels_last:
        xd, xtd = xd.contiguous(memory_format=torch.channels_last), xtd.contiguous(memory_format=torch.channels_last)
    forward, step_hooks = speed.compiled(model)
    optimizer = build_optimizer(OptimConfig(name="adam", lr=1e-3), model, fused=speed.fused_optimizer)
    trainer = Trainer(model=forward, optimizer=optimizer,
                      train_batches=TrainLoader(xd, yd, 128, True, torch.Generator().manual_seed(0)),
                      eval_data=(xtd, ytd), eval_batch_size=256, autocast=speed.autocast,
                      hooks=list(step_hooks), eval_hooks=list(step_hooks))
    reset_peak(device)
    fast_train = [timed_gstlab(trainer, device, trainer.train_epoch) for _ in range(args.epochs)]
    fast_test = [timed_gstlab(trainer, device, trainer.evaluate) for _ in range(args.epochs)]
    fast_mem = peak_mb(device)
    # medians over the epochs after the first (warm-up, cudnn autotuning, compilation)
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731
    return {
        "arch": arch, "width": args.width, "n_train": len(x), "n_test": len(xt), "speed": speed.as_dict(),
        "plain_train_img_s": len(x) / med(plain_train), "gstlab_train_img_s": len(x) / med(fast_train),
        "plain_eval_img_s": len(xt) / med(plain_test), "gstlab_eval_img_s": len(xt) / med(fast_test),
        "train_speedup": med(plain_train) / med(fast_train), "eval_speedup": med(plain_test) / med(fast_test),
        "event_cost_over_epoch": 2 * med(fast_test) / med(fast_train),
        "plain_peak_mb": plain_mem, "gstlab_peak_mb": fast_mem,
    }


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def table(rows: list[dict], device_name: str) -> str:
    lines = [f"Machine: {device_name}; torch {torch.__version__}", "",
             "| model | width | train img/s plain | train img/s gstlab | speedup | eval img/s plain | "
             "eval img/s gstlab | event / epoch | peak MB plain | peak MB gstlab |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['width']} | {r['plain_train_img_s']:.0f} | {r['gstlab_train_img_s']:.0f} | "
                     f"{r['train_speedup']:.2f}x | {r['plain_eval_img_s']:.0f} | {r['gstlab_eval_img_s']:.0f} | "
                     f"{r['event_cost_over_epoch']:.2f} | {_mb(r['plain_peak_mb'])} | {_mb(r['gstlab_peak_mb'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn", "resnet18"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=50000, help="training images (CIFAR-10 size by default)")
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per variant (first is warm-up)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes of the baseline")
    parser.add_argument("--compile", action="store_true", help="torch.compile the gstlab model")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="gstlab's training precision (auto: bf16 on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = fake_cifar(args.n, args.n_test)
    rows = [bench_arch(arch, args, data, device) for arch in args.arch]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(table(rows, f"{name} ({torch.get_num_threads()} threads)"))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
