"""What portable mode costs: CPU seconds of a short `gst run` process in default mode (one thread) and in
portable mode with each MKL branch (the shipped COMPATIBLE, which Intel documents for Intel and compatible CPUs,
and AVX2, which is Intel-only), on a mini VGG (GEMMs: the classifier only) and on the MNIST-1D MLP (all GEMMs).
Alternating rounds; medians of the per-round ratios to portable COMPATIBLE. Each run is a fresh process, as the
kernels are pinned before torch loads.

    python benchmarks/bench_portable.py [--rounds 3] [--vgg-epochs 10] [--mlp-epochs 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile

from gstlab.environment import cpu_model, native_isa

MLP = ("data.name=mnist1d", "data.train_subset=null", "data.test_subset=null", "data.image_size=null",
       "model.arch=mlp", "model.channels=[]", "model.hidden=[256,256,256,256]", "model.batch_norm=true")
# default mode, or portable mode with MKL_CBWR replaced (the shipped pins otherwise)
VARIANTS = {"portable COMPATIBLE": "COMPATIBLE", "portable AVX2": "AVX2", "default, 1 thread": None}
LAUNCH = ("import sys, gstlab.portable as p\n"
          "if sys.argv[1] != '-': p.PINNED_ENV['MKL_CBWR'] = sys.argv[1]\n"
          "from gstlab import cli\n"
          "raise SystemExit(cli.main(sys.argv[2:]))")


def cpu_seconds(branch: str | None, run_args: list[str]) -> float:
    """CPU seconds (user + system) of one `gst run` process."""
    env = {k: v for k, v in os.environ.items() if k != "GSTLAB_PORTABLE"}
    mode = ["--portable"] if branch else []
    if not branch:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", LAUNCH, branch or "-", *mode, "run", *run_args, "--set",
                        "train.threads=1", "--no-progress", "--out", f"{tmp}/run"], env=env, check=True,
                       capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def workloads(vgg_epochs: int, mlp_epochs: int) -> dict[str, list[str]]:
    def short(epochs: int, *sets: str) -> list[str]:
        over = [f"train.epochs={epochs}", "optim.milestones=[]", "probes.epochs=[]", *sets]
        return ["--preset", "F2_VGG_0", "--scale", "mini", *(a for s in over for a in ("--set", s))]

    return {f"mini VGG, {vgg_epochs} epochs": short(vgg_epochs),
            f"MNIST-1D MLP, {mlp_epochs} epochs": short(mlp_epochs, *MLP)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vgg-epochs", type=int, default=10)
    parser.add_argument("--mlp-epochs", type=int, default=30)
    args = parser.parse_args()
    print(f"{cpu_model()} ({native_isa()}), {os.cpu_count()} cores; CPU seconds per run, median ratio to "
          f"portable COMPATIBLE over {args.rounds} rounds")
    for name, run_args in workloads(args.vgg_epochs, args.mlp_epochs).items():
        times = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, branch in VARIANTS.items():
                times[variant].append(cpu_seconds(branch, run_args))
        base = times["portable COMPATIBLE"]
        for variant, seconds in times.items():
            ratio = statistics.median(s / b for s, b in zip(seconds, base, strict=True))
            print(f"{name:24s} {variant:20s} {statistics.median(seconds):7.1f} s  {ratio:.3f}x")


if __name__ == "__main__":
    main()
