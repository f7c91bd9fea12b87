"""Where a training step's time goes on a GPU: images/s of one VGG11 (or ResNet18) training step on device-resident
CIFAR-shaped data under variants of the step, all in one run. Answers whether the paper-width step is bound by the
host (launching kernels) or by the GPU: a host-bound step gets faster per image with a larger batch and with CUDA
graphs, a GPU-bound one does not.

    python benchmarks/bench_step.py --device cuda
    python benchmarks/bench_step.py --device cpu --width 0.125 --steps 5   # a rehearsal

Variants: the gstlab step (bf16 autocast, channels_last, foreach Adam); fp32; fused Adam; batch 512;
torch.compile (default mode); torch.compile(mode="reduce-overhead") (CUDA graphs). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gstlab.config import ModelConfig
from gstlab.environment import cpu_model
from gstlab.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(args, device: torch.device, *, bf16: bool = True, fused: bool = False, batch: int = 128,
              compile_mode: str | None = None) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch, width=args.width), (3, 32, 32), 10).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=fused or None)
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, batch


def images_per_s(step: Callable[[], None], batch: int, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = {
        "gstlab step (bf16, channels_last, foreach Adam)": {},
        "fp32": {"bf16": False},
        "fused Adam": {"fused": True},
        "batch 512": {"batch": 512},
        "compile + fused Adam": {"fused": True, "compile_mode": "default"},
        "compile reduce-overhead (CUDA graphs) + fused Adam": {"fused": True, "compile_mode": "reduce-overhead"},
    }
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{args.arch} width {args.width} on {machine}, torch {torch.__version__}\n\n"
          "| variant | images/s | vs gstlab step |\n|---|---|---|", flush=True)
    base = None  # the gstlab step's rate (the first variant); if it fails, no ratios rather than another base
    for i, (name, kw) in enumerate(variants.items()):
        try:
            step, batch = make_step(args, device, **kw)
            warmup = args.warmup * (3 if "compile_mode" in kw else 1)
            rate = images_per_s(step, batch, args.steps, warmup, device)
        except Exception as err:  # noqa: BLE001 (report the variant that fails, go on with the others)
            print(f"| {name} | failed: {type(err).__name__}: {str(err)[:80]} | |", flush=True)
            continue
        base = rate if i == 0 else base
        print(f"| {name} | {rate:,.0f} | {'n/a' if base is None else f'{rate / base:.2f}x'} |", flush=True)


if __name__ == "__main__":
    main()
