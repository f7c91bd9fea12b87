"""The cost of one σ tried by the PAC-Bayes flatness search (gstlab/pac_bayes.py): M noise draws put on the model
and the subset evaluated under each, with the draws kept on the device (``NoiseDraws``' cache) vs drawn anew at
every σ, against a plain PyTorch floor in the same run: M evaluations of the unperturbed model, no noise. The
search tries ~11-13 σ per variant, two variants per probe, each costing what is measured here.

    python benchmarks/bench_pac_bayes.py                              # mini VGG (Figure 2 at mini), 16x16
    python benchmarks/bench_pac_bayes.py --width 1 --size 32 --channels 3 --samples 512   # paper-width VGG11
    python benchmarks/bench_pac_bayes.py --device cuda --width 1 --size 32 --channels 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gstlab.config import ModelConfig
from gstlab.environment import cpu_model
from gstlab.experiments.presets import MINI_VGG_CHANNELS
from gstlab.models import build_model
from gstlab.pac_bayes import NoiseDraws, Perturbation
from gstlab.train import evaluate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=None, help="VGG11 width (default: the mini channels)")
    parser.add_argument("--channels", type=int, default=1, help="input channels")
    parser.add_argument("--size", type=int, default=16, help="input height and width")
    parser.add_argument("--samples", type=int, default=2048, help="the subset (probes.pac_bayes_samples)")
    parser.add_argument("--draws", type=int, default=10, help="M (probes.pac_bayes_draws)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="vgg11_bn", width=args.width) if args.width else ModelConfig(
        arch="vgg11_bn", channels=MINI_VGG_CHANNELS)
    model = build_model(cfg, (args.channels, args.size, args.size), 10).to(device).eval()
    x = torch.randn(args.samples, args.channels, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.samples,), device=device)

    def one_sigma(noise: Perturbation | None):
        def run():
            for m in range(args.draws):
                if noise is not None:
                    noise.apply(0.05, m)
                evaluate(model, x, y, args.batch_size)
            if noise is not None:
                noise.restore()
        return run

    floor = seconds(one_sigma(None), device, args.repeats)
    kept = seconds(one_sigma(Perturbation(model, None, NoiseDraws(model, 0, args.draws), False)), device,
                   args.repeats)
    anew = seconds(one_sigma(Perturbation(model, None, NoiseDraws(model, 0, args.draws, cache_bytes=0), False)),
                   device, args.repeats)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__, "threads": args.threads, "params": params, "samples": args.samples,
        "draws": args.draws, "s_per_sigma_plain_evaluations": round(floor, 4), "s_per_sigma_kept": round(kept, 4),
        "s_per_sigma_anew": round(anew, 4), "kept_vs_plain": round(kept / floor, 3),
        "anew_vs_plain": round(anew / floor, 3), "anew_vs_kept": round(anew / kept, 3)}, indent=1))


if __name__ == "__main__":
    main()
