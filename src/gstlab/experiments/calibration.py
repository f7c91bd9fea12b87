"""Images per CPU second of the mini models on *this* machine, for `gst presets --studies`.

A quick calibration (a few training steps and one evaluation batch of every mini model, one thread, random
data of the mini input shape; ~10-20 CPU s) measured the first time it is needed and cached per CPU model,
instruction set, kernel pinning and torch version in ``~/.cache/gstlab/calibration.json`` (``GSTLAB_CACHE``
moves it; delete the file to measure again). Estimates then say what a study costs where it will run, not on
the machine that wrote the code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

Rates = dict[tuple[str, float], tuple[float, float]]  # (arch, width) -> (train, eval) images per CPU second
CACHE = Path(os.environ.get("GSTLAB_CACHE", Path.home() / ".cache" / "gstlab")) / "calibration.json"
TRAIN_BATCH, EVAL_BATCH, MIN_SECONDS = 128, 500, 0.5


def machine_key() -> str:
    import torch  # noqa: PLC0415

    from gstlab.environment import cpu_model, native_isa  # noqa: PLC0415

    return (f"{cpu_model()} | {native_isa()} | ATen {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__}")


def cached_rates(models: list[tuple[str, float]], path: Path = CACHE) -> tuple[Rates, str]:
    """This machine's rates of ``models`` (measured now if the cache lacks them) and a line saying whose."""
    key = machine_key()
    cache = _read(path)
    entry = cache.get(key, {"measured": None, "rates": []})
    rates = {(a, w): (t, e) for a, w, t, e in entry["rates"]}
    missing = [m for m in models if m not in rates]
    if missing:
        print(f"calibrating this machine's speed once ({len(missing)} mini models, ~20 s; cached in {path})",
              file=sys.stderr, flush=True)
        rates.update({m: measure(*m) for m in missing})
        entry = {"measured": time.strftime("%Y-%m-%d"), "rates": [[a, w, *r] for (a, w), r in rates.items()]}
        cache[key] = entry
        _write(path, cache)
    return rates, f"{key}; rates measured {entry['measured']} (cache {path})"


def measure(arch: str, width: float) -> tuple[float, float]:
    """(training, evaluation) images per CPU second of the mini ``arch`` at ``width``, on one thread."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from gstlab.config import ModelConfig  # noqa: PLC0415
    from gstlab.experiments.presets import MINI_VGG_CHANNELS  # noqa: PLC0415
    from gstlab.models import build_model  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        channels = tuple(MINI_VGG_CHANNELS) if arch == "vgg11_bn" and width == 1.0 else ()
        model = build_model(ModelConfig(arch=arch, width=width, channels=channels), (1, 16, 16), 10)
        opt = torch.optim.Adam(model.parameters())
        x, y = torch.randn(TRAIN_BATCH, 1, 16, 16), torch.randint(0, 10, (TRAIN_BATCH,))

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train = TRAIN_BATCH / _seconds_per_call(step)
        model.eval()
        xe = torch.randn(EVAL_BATCH, 1, 16, 16)
        with torch.no_grad():
            evaluate = EVAL_BATCH / _seconds_per_call(lambda: model(xe))
        return train, evaluate
    finally:
        torch.set_num_threads(threads)


def _seconds_per_call(fn) -> float:
    """CPU seconds per call after one warm-up call: the median of calls until MIN_SECONDS have passed (>= 3)."""
    fn()
    times: list[float] = []
    while len(times) < 3 or sum(times) < MIN_SECONDS:
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return sorted(times)[len(times) // 2]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again
    return data if isinstance(data, dict) else {}


def _write(path: Path, cache: dict) -> None:
    from gstlab.store import atomic_write_text  # noqa: PLC0415

    try:
        atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    except OSError:
        pass  # a read-only home: the rates are still used, only not kept
