"""Images per CPU second of the mini models on *this* machine, for `gst presets --studies`, and of the models of
any study, for `gst sweep --dry-run`.

A quick calibration (a few training steps and one evaluation batch of every model, one thread, random data of
the model's input shape; ~10-20 CPU s for the mini models, ~2 s per other model) measured the first time it is
needed and cached per CPU model,
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

    from gstlab.environment import cpu_id, cpu_model, native_isa  # noqa: PLC0415

    return (f"{cpu_model()} | {cpu_id()} | {native_isa()} | ATen {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__}")


def cached_rates(models: list[tuple[str, float]], path: Path | None = None) -> tuple[Rates, str]:
    """This machine's rates of ``models`` (measured now if the cache lacks them) and a line saying whose."""
    return _cached("rates", models, lambda m: measure(*m), "mini model(s), ~20 s", path)


def cached_spec_rates(specs: list[str], path: Path | None = None) -> tuple[dict[tuple[str], tuple[float, float]], str]:
    """This machine's rates of run ``specs`` (see ``spec``), keyed by ``(spec,)``, measured now where missing."""
    return _cached("specs", [(s,) for s in specs], lambda k: measure_spec(k[0]), "model(s) of this study, ~2 s each",
                   path)


def _cached(section: str, keys: list, measure_one, what: str, path: Path | None) -> tuple[dict, str]:
    """Rates of ``keys`` (tuples of JSON scalars) from the cache section ``section`` (rows ``[*key, train, eval]``)
    of this machine, measuring and caching the missing ones (``path``: the cache file, default CACHE)."""
    path = path or CACHE
    machine = machine_key()
    cache = _read(path)
    entry = cache.get(machine, {"measured": None})
    rates = {tuple(k): (t, e) for *k, t, e in entry.get(section, [])}
    missing = [k for k in keys if k not in rates]
    if missing:
        print(f"calibrating this machine's speed once ({len(missing)} {what}; cached in {path})",
              file=sys.stderr, flush=True)
        rates.update({k: measure_one(k) for k in missing})
        entry = {**entry, "measured": time.strftime("%Y-%m-%d"), section: [[*k, *r] for k, r in rates.items()]}
        cache[machine] = entry
        _write(path, cache)
    return rates, f"{machine}; rates measured {entry['measured']} (cache {path})"


def spec(model: dict, input_shape: tuple[int, ...], classes: int, batch: int, eval_batch: int) -> str:
    """The calibration key of a run's model (a ModelConfig mapping), input and batch sizes."""
    return json.dumps({"model": model, "shape": list(input_shape), "classes": classes, "batch": batch,
                       "eval_batch": eval_batch}, sort_keys=True)


def measure(arch: str, width: float) -> tuple[float, float]:
    """(training, evaluation) images per CPU second of the mini ``arch`` at ``width``, on one thread."""
    from gstlab.experiments.presets import MINI_VGG_CHANNELS  # noqa: PLC0415

    channels = list(MINI_VGG_CHANNELS) if arch == "vgg11_bn" and width == 1.0 else []
    return measure_spec(spec({"arch": arch, "width": width, "channels": channels}, (1, 16, 16), 10, TRAIN_BATCH,
                             EVAL_BATCH))


def measure_spec(key: str) -> tuple[float, float]:
    """(training, evaluation) images per CPU second of the model, input and batch sizes of ``key``, on one
    thread (random data: speed does not depend on the values). ConfigError, before anything is allocated, for a
    model above preflight.MAX_PARAMS (a run would be refused; building it could exhaust the memory)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from gstlab.config import ModelConfig  # noqa: PLC0415
    from gstlab.models import build_model  # noqa: PLC0415
    from gstlab.preflight import check_model_size  # noqa: PLC0415

    s = json.loads(key)
    model_cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in s["model"].items()})
    shape, batch, eval_batch = tuple(s["shape"]), s["batch"], s["eval_batch"]
    check_model_size(model_cfg, shape, s["classes"])  # on the meta device
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(model_cfg, shape, s["classes"])
        opt = torch.optim.Adam(model.parameters())
        x, y = torch.randn(batch, *shape), torch.randint(0, s["classes"], (batch,))

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train = batch / _seconds_per_call(step)
        model.eval()
        xe = torch.randn(eval_batch, *shape)
        with torch.no_grad():
            evaluate = eval_batch / _seconds_per_call(lambda: model(xe))
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
