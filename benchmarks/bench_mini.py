"""Cost of the `mini` scale on one CPU core: a whole 325-epoch Figure 2 VGG run against a plain PyTorch loop
over the same model, data and epochs (evaluated once per epoch, no pruning), and per-architecture rates for
`gst presets --studies`.

    python benchmarks/bench_mini.py                 # one F2_VGG_4 mini run + the plain loop (~6-8 minutes)
    python benchmarks/bench_mini.py --rates         # training/evaluation images/s of every mini model (~2 min)

Each measurement runs in its own single-threaded subprocess; we report wall and CPU (user + system) seconds.
CPU seconds are what a run costs one quiet core; wall seconds also count whatever else the machine does.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

RATE_PRESETS = ("F2_VGG_0", "F2_RN_0", "F4_18_0", "F4_20_0", "F4_56_0", "FC3_2", "TF1_0")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) in a fresh single-threaded python."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gstlab_run(preset: str) -> dict:
    """One mini run of ``preset`` through gstlab's runner (masks, events, evaluations, checkpoints)."""
    return _child(f"""
import json, tempfile, time, torch
torch.set_num_threads(1)
from gstlab import config as C
from gstlab.experiments.presets import preset_config
from gstlab.runner import execute
from benchmarks.bench_mini import _cpu_seconds
cfg = C.parse(preset_config("{preset}", "mini"), ["train.progress=false", "probes.epochs=[]"])
t0, c0 = time.perf_counter(), _cpu_seconds()
summary = execute(cfg, tempfile.mkdtemp() + "/run", progress=False)
print(json.dumps({{"wall": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0,
                  "best_test_acc": summary["best_test_acc"], "gap": summary["generalization_gap"],
                  "epochs": cfg.train.epochs}}))
""")


def plain_loop(preset: str) -> dict:
    return _child(f"""
import json, torch
torch.set_num_threads(1)
from benchmarks.bench_mini import plain_training
print(json.dumps(plain_training("{preset}")))
""")


def plain_training(preset: str) -> dict:
    """The same model, data, optimizer, LR schedule and epochs in a hand-written loop; one evaluation per epoch."""
    from gstlab import config as C
    from gstlab.data import load_data
    from gstlab.experiments.presets import preset_config
    from gstlab.models import build_model
    from gstlab.seeding import derive_seed

    cfg = C.parse(preset_config(preset, "mini"))
    data = load_data(cfg.data, seed=derive_seed(cfg.seed, "data"))  # the training subset `gst run` draws
    x_train, x_test = data.x_train[:], data.x_test[:]  # decoded once: float tensors, as a plain loop holds them
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), cfg.optim.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.optim.milestones), cfg.optim.gamma)
    epochs = cfg.train.epochs
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(cfg.train.batch_size):
            loss = F.cross_entropy(model(x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for xb in x_test.split(cfg.train.eval_batch_size):
                model(xb)
        sched.step()
    return {"wall": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0, "epochs": epochs}


def rates(preset: str, epochs: int = 2) -> dict:
    """Training and evaluation images per CPU second of ``preset``'s mini model (plain loop, one thread)."""
    return _child(f"""
import json, time, torch
torch.set_num_threads(1)
import torch.nn.functional as F
from gstlab import config as C
from gstlab.data import load_data
from gstlab.experiments.presets import preset_config
from gstlab.models import build_model
from benchmarks.bench_mini import _cpu_seconds
cfg = C.parse(preset_config("{preset}", "mini"))
data = load_data(cfg.data, seed=0)
x_train, x_test = data.x_train[:], data.x_test[:]
model = build_model(cfg.model, data.input_shape, data.num_classes)
opt = torch.optim.Adam(model.parameters())
c0 = _cpu_seconds()
for _ in range({epochs}):
    for idx in torch.randperm(len(x_train)).split(128):
        loss = F.cross_entropy(model(x_train[idx]), data.y_train[idx])
        opt.zero_grad(); loss.backward(); opt.step()
train = {epochs} * len(x_train) / (_cpu_seconds() - c0)
model.eval(); c0 = _cpu_seconds()
with torch.no_grad():
    for xb in x_test.split(1000):
        model(xb)
evaluate = len(x_test) / (_cpu_seconds() - c0)
print(json.dumps({{"arch": cfg.model.arch, "width": cfg.model.width, "train": train, "eval": evaluate}}))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="F2_VGG_4", help="a Figure 2 VGG preset (default: Prune_L 13%%)")
    parser.add_argument("--rates", action="store_true", help="images/s of every mini architecture instead")
    args = parser.parse_args()
    if args.rates:
        for preset in RATE_PRESETS:
            r = rates(preset)
            print(f"{preset:9s} {r['arch']:9s} width {r['width']:<6} train {r['train']:7.0f} img/s  "
                  f"eval {r['eval']:7.0f} img/s (one core)", flush=True)
        return
    g = gstlab_run(args.preset)
    p = plain_loop(args.preset)
    print(f"{args.preset} at mini, {g['epochs']} epochs, one thread (best test acc {g['best_test_acc']:.2f}%, "
          f"gap {g['gap']:.2f})")
    print(f"{'loop':8s} {'wall (s)':>9s} {'CPU (s)':>8s}")
    for name, r in (("gstlab", g), ("plain", p)):
        print(f"{name:8s} {r['wall']:9.1f} {r['cpu']:8.1f}")
    print(f"ratio gstlab / plain: wall {g['wall'] / p['wall']:.2f}x, CPU {g['cpu'] / p['cpu']:.2f}x; "
          f"budget: 180 s on one core")


if __name__ == "__main__":
    main()
