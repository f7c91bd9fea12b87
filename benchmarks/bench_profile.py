"""Where a `mini` run's CPU time goes, by phase and by op (torch.profiler), and its achieved GFLOP/s.

Runs the first ``--epochs`` epochs of a mini preset (default F2_VGG_4: Prune_L 13%, events at epochs 3-6)
through gstlab's runner on one thread, with the phases labelled (data decode, masks, evaluation, pruning
event, checkpoint, optimizer) and every other op attributed to the training step by name (convolutions,
BatchNorm, ReLU, pooling, linear, loss and bookkeeping). Shares of profiled self time stay meaningful on a
busy machine; absolute times do not. ``--isa avx2`` reruns it in a child with ATen and oneDNN pinned to AVX2
(what an AVX2-only CPU runs). FLOPs are counted by ``torch.utils.flop_counter`` on one training step and one
evaluation batch.

    python benchmarks/bench_profile.py [--preset F2_VGG_4] [--epochs 10] [--isa native|avx2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PIN_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}

# op name fragments -> category (first match wins); ops outside a labelled phase
OP_CATEGORIES = (
    ("convolution", "convolutions (fwd+bwd)"), ("conv2d", "convolutions (fwd+bwd)"),
    ("batch_norm", "BatchNorm (fwd+bwd)"),
    ("relu", "ReLU (fwd+bwd)"), ("threshold", "ReLU (fwd+bwd)"),
    ("max_pool", "max-pool (fwd+bwd)"),
    ("addmm", "linear (fwd+bwd)"), ("aten::mm", "linear (fwd+bwd)"), ("aten::t", "linear (fwd+bwd)"),
    ("cross_entropy", "loss"), ("log_softmax", "loss"), ("nll_loss", "loss"),
)
OTHER = "step bookkeeping (other ops)"
PHASES = ("data decode", "masks", "evaluation", "pruning event", "checkpoint + tables", "optimizer step",
          "zero_grad")


def _label(name: str):
    """A decorator factory: wrap a callable in a profiler label."""
    import torch

    def wrap(fn):
        def inner(*args, **kwargs):
            with torch.profiler.record_function(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


def _instrument() -> None:
    """Label gstlab's phases (monkeypatched here so the library stays untouched)."""
    from gstlab import runner
    from gstlab.data import tensor_data
    from gstlab.pruning import masks, pruner

    tensor_data.Images.__getitem__ = _label("data decode")(tensor_data.Images.__getitem__)
    tensor_data.augment_batch = _label("data decode")(tensor_data.augment_batch)
    masks.UnitMasks.apply_ = _label("masks")(masks.UnitMasks.apply_)
    runner.Trainer.evaluate = _label("evaluation")(runner.Trainer.evaluate)
    pruner.Pruner.step = _label("pruning event")(pruner.Pruner.step)
    runner._checkpoint = _label("checkpoint + tables")(runner._checkpoint)


def _phase(event) -> str | None:
    """The labelled phase an event runs in (its own name or an ancestor's), if any."""
    while event is not None:
        name = event.name
        if name in PHASES:
            return name
        if name.startswith("Optimizer.step"):
            return "optimizer step"
        if name.startswith("Optimizer.zero_grad"):
            return "zero_grad"
        event = event.cpu_parent
    return None


def _category(event) -> str:
    phase = _phase(event)
    if phase is not None:
        return phase
    name = event.name
    for fragment, category in OP_CATEGORIES:
        if fragment in name:
            return category
    return OTHER


def flops(run) -> tuple[float, float]:
    """FLOPs of one training step (forward + backward) at the run's batch size and of one evaluation image."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(run.trainer.train_batches))
    model = run.model
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops() / len(x)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train()
    return train, counter.get_total_flops() / len(x)


def profile(preset: str, epochs: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    from gstlab import config as C
    from gstlab import runner
    from gstlab.experiments.presets import preset_config

    torch.set_num_threads(1)
    _instrument()
    cfg = C.parse(preset_config(preset, "mini"), ["train.progress=false", "probes.epochs=[]"])
    run = runner.prepare(cfg, Path(tempfile.mkdtemp()) / "run")
    run.out.mkdir(parents=True)
    train_flops, eval_flops = flops(run)
    run = runner.prepare(cfg, run.out)  # fresh: the FLOP count touched the model
    times: list[float] = []
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        for epoch in range(epochs):
            t0 = time.process_time()
            runner.run_epoch(run, epoch)
            runner._checkpoint(run, epoch)
            times.append(time.process_time() - t0)
    shares: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for event in prof.events():
        category = _category(event)
        shares[category] += event.self_cpu_time_total
        if category == OTHER:
            other[event.name] += event.self_cpu_time_total
    total = sum(shares.values())
    print(f"{preset} mini, epochs 0-{epochs - 1}, one thread, ATen {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}; profiled self CPU time:")
    for name, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {name:32s} {us / 1e6:7.2f} s  {100 * us / total:5.1f}%")
    print(f"  {OTHER}: " + ", ".join(f"{name} {100 * us / total:.1f}%" for name, us in
                                     sorted(other.items(), key=lambda kv: -kv[1])[:8]))
    rows = run.rows["metrics"]
    n_train, n_eval = len(run.trainer.train_batches.x), len(run.trainer.eval_data[0])
    evals = len(rows) + sum(1 for r in rows if r["units_removed"])
    work = len(rows) * n_train * train_flops + evals * n_eval * eval_flops
    print(f"FLOPs: {train_flops / 1e6:.2f} MFLOP per training image (fwd+bwd), {eval_flops / 1e6:.2f} per "
          f"evaluated image; {work / 1e9:.1f} GFLOP in these epochs, {work / 1e9 / sum(times):.2f} GFLOP/s of "
          f"CPU time (without the profiler's own cost, see bench_mini.py)")
    print("CPU s per epoch (with profiler):", " ".join(f"{t:.2f}" for t in times))
    print("\ntop ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="F2_VGG_4")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: pin ATen, oneDNN and MKL to AVX2 in a child process (emulates an AVX2 CPU)")
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        argv = [sys.executable, *sys.argv]
        sys.exit(subprocess.run(argv, env={**os.environ, **PIN_AVX2}).returncode)
    with contextlib.suppress(BrokenPipeError):
        profile(args.preset, args.epochs)


if __name__ == "__main__":
    main()
