"""Study presets: every figure and table of the paper (docs/paper.md#figures-and-tables) as a study of run presets.

Seeds per scale: ``paper`` and ``mini`` use the official replicate counts (10; 5 for Figure 3); ``smoke``
uses 1-2. ``estimate_minutes`` says what a study costs on this machine, from its calibrated throughput
(``gstlab.experiments.calibration``; tests inject rates).
Figure 6 and E1-E6 reuse Figure 2's VGG runs (same run ids, so a shared ``--store`` trains them once); the
Figure 5 and D2 baselines are the Figure 2 / Figure 5 runs the paper took them from.
"""

from __future__ import annotations

import heapq

from gstlab.config import ConfigError, RunConfig, parse, to_dict
from gstlab.experiments.calibration import Rates, cached_rates, cached_spec_rates, spec
from gstlab.experiments.presets import SCALES, preset_config
from gstlab.preflight import data_shape, data_sizes
from gstlab.pruning.schedule import event_epochs

F2_VGG = [f"F2_VGG_{i}" for i in range(6)]
F3 = [f"F3_{s}_{p}" for s in "SRL" for p in (4, 20, 40, 60, 100, 200, 300)]

STUDIES: dict[str, dict] = {
    "fig2_vgg": {"figure": "figure2", "settings": F2_VGG, "seeds": {"paper": 10, "mini": 10, "smoke": 2}},
    "fig2_resnet": {"figure": "figure2", "settings": [f"F2_RN_{i}" for i in range(4)],
                    "seeds": {"paper": 10, "mini": 10, "smoke": 2}},
    "fig3": {"figure": "figure3", "settings": F3, "seeds": {"paper": 5, "mini": 5, "smoke": 1}},
    "fig4": {"figure": "figure4", "settings": [f"F4_{d}_{i}" for d in (18, 20, 56) for i in (0, 1)],
             "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "fig5": {"figure": "figure5", "settings": ["F2_VGG_0"] + [f"F5_{i}" for i in range(7)],
             "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "fig6": {"figure": "figure6", "settings": F2_VGG, "seeds": {"paper": 10, "mini": 10, "smoke": 2}},
    "figB2_vgg": {"figure": "figureB2", "settings": ["F2_VGG_0"] + [f"FB2_VGG_{i}" for i in (1, 2, 3)],
                  "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "figB2_resnet": {"figure": "figureB2", "settings": ["F2_RN_0"] + [f"FB2_RN_{i}" for i in (1, 2, 3)],
                     "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "figC3": {"figure": "figureC3", "settings": [f"FC3_{i}" for i in range(3)],
              "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "figD2": {"figure": "figureD2", "settings": ["F2_VGG_0", "F5_0"] + [f"FD2_{i}" for i in range(4)],
              "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "figE": {"figure": "figureE", "settings": F2_VGG, "seeds": {"paper": 10, "mini": 10, "smoke": 2}},
    "tableC1": {"figure": "tableC1", "settings": [f"TC1_{i}" for i in (1, 2, 3)],
                "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
    "tableF1": {"figure": "tableF1", "settings": [f"TF1_{i}" for i in range(4)],
                "seeds": {"paper": 10, "mini": 10, "smoke": 1}},
}

# Images per CPU second on one core of the developers' machine (2-core VM, AMD EPYC with AVX-512, torch 2.13 CPU,
# fp32, one thread), (training, evaluation), by (architecture, width) of the mini models at 16x16 on Fashion-MNIST:
# `python benchmarks/bench_mini.py --rates` (the vgg11_bn entry is the mini channels [8,16,32,32,128x4]).
# Measured with the machine shared (CPU seconds, not wall). Other widths scale from the arch's first entry by
# width squared (smoke scale, Table F1's ResNet18 at width 1/8). Estimates use this machine's calibrated rates of
# the same models; these reference rates only scale PROBE_S, which was measured on that machine.
MINI_IMAGES_PER_CPU_S: dict[tuple[str, float], tuple[float, float]] = {
    ("vgg11_bn", 1.0): (5000.0, 19960.0), ("resnet18", 0.375): (498.0, 1380.0), ("resnet18", 0.5): (354.0, 989.0),
    ("resnet18", 1.0): (97.0, 265.0), ("resnet20", 1.0): (965.0, 2488.0), ("resnet56", 1.0): (346.0, 932.0),
}
RUN_OVERHEAD_S = 10.0  # process start and data loading
PROBE_S = 50.0  # CPU s of one mini VGG probe (Lanczos top-20 on 512 images, 10 eps directions), measured


def study_dict(name: str, scale: str) -> dict:
    """The study mapping of study preset ``name`` at ``scale`` (what a study YAML would hold)."""
    if name not in STUDIES:
        raise ConfigError(f"--study: unknown study preset {name!r}; allowed: {', '.join(STUDIES)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    spec = STUDIES[name]
    return {"name": f"{name}@{scale}", "figure": spec["figure"], "scale": scale, "seeds": spec["seeds"][scale],
            "settings": [{"preset": p} for p in spec["settings"]]}


def machine_rates() -> tuple[Rates, str]:
    """This machine's rates of the mini models (calibrated once, cached) and a line naming the machine."""
    return cached_rates(list(MINI_IMAGES_PER_CPU_S))


def run_seconds(preset: str, scale: str, rates: Rates = MINI_IMAGES_PER_CPU_S) -> float:
    """Estimated CPU seconds of one run on one core at ``rates`` (images/s; default: the developers' machine)."""
    return cfg_seconds(parse(preset_config(preset, scale)), rates)


def cfg_seconds(cfg: RunConfig, rates: Rates = MINI_IMAGES_PER_CPU_S) -> float:
    """Estimated CPU seconds of run ``cfg`` (a mini model's arch and width) on one core at ``rates``."""
    train_rate, eval_rate = images_per_cpu_s(cfg.model.arch, cfg.model.width, rates)
    slower = MINI_IMAGES_PER_CPU_S["vgg11_bn", 1.0][0] / rates["vgg11_bn", 1.0][0]  # than where PROBE_S was measured
    return config_seconds(cfg, train_rate, eval_rate, slower)


def config_seconds(cfg: RunConfig, train_rate: float, eval_rate: float, probe_slowdown: float,
                   done: int = 0) -> float:
    """Estimated CPU seconds of run ``cfg`` on one core from epoch ``done`` on (0: the whole run): training and
    evaluation images at the given rates (images/s), a second evaluation after every pruning epoch, start-up,
    and each flatness probe at PROBE_S x ``probe_slowdown`` per 512 samples."""
    n_train, n_test = data_sizes(cfg.data)
    epochs = max(0, cfg.train.epochs - done)
    pruning = cfg.pruning
    events = {e for layer in pruning.layers for e in event_epochs(layer.start, layer.end, pruning.period_of(layer))
              if e >= done}
    evaluations = epochs + len(events)  # a second evaluation after every event
    probes = [e for e in cfg.probes.epochs if e >= done]
    probe_s = PROBE_S * probe_slowdown * len(probes) * cfg.probes.samples / 512
    # no factor for gstlab's own overhead: with the extra evaluations counted, this gives 174 s for F2_VGG_4
    # without probes, bench_mini.py measured 178 CPU s
    return epochs * n_train / train_rate + evaluations * n_test / eval_rate + RUN_OVERHEAD_S + probe_s


def study_estimate(cfgs: list[RunConfig], done: list[int] | None = None) -> tuple[float, int, str]:
    """(CPU seconds on one core of this machine, runs without an estimate, a line naming the machine) for
    ``cfgs``, each from its epoch in ``done`` on (default: whole runs); see :func:`run_estimates`."""
    seconds, line = run_estimates(cfgs, done)
    return sum(s for s in seconds if s is not None), seconds.count(None), line


def run_estimates(cfgs: list[RunConfig], done: list[int] | None = None) -> tuple[list[float | None], str]:
    """(CPU seconds on one core of this machine per run, None where there is no estimate; a line naming the
    machine) for ``cfgs``, each from its epoch in ``done`` on (default: whole runs): each distinct model, input
    shape and batch size is calibrated once on this machine (cached). A run has no estimate when its data set's
    shape or size is unknown without loading it, or its model was given from Python."""
    done = done or [0] * len(cfgs)
    keys = [_spec(cfg) for cfg in cfgs]
    known = sorted({k for k in keys if k})
    rates, line = cached_spec_rates(known) if known else ({}, "no run to calibrate")
    ref_vgg = MINI_IMAGES_PER_CPU_S["vgg11_bn", 1.0][0]  # PROBE_S's model on the machine that measured it
    seconds: list[float | None] = []
    for cfg, key, start in zip(cfgs, keys, done):
        if not key:
            seconds.append(None)
            continue
        train_rate, eval_rate = rates[(key,)]
        seconds.append(config_seconds(cfg, train_rate, eval_rate, ref_vgg / train_rate, start))
    return seconds, line


def pool_seconds(seconds: list[float], slots: int) -> float:
    """Wall seconds of runs taking ``seconds`` each, handed out in this order to ``slots`` parallel workers,
    each run to the first worker free (as a sweep's pool does)."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def _spec(cfg: RunConfig) -> str | None:
    shape = data_shape(cfg.data)
    if shape is None or cfg.model.supplied or not all(data_sizes(cfg.data)):
        return None
    model = {k: v for k, v in to_dict(cfg.model).items() if k != "supplied"}
    return spec(model, shape[0], shape[1], cfg.train.batch_size, cfg.train.eval_batch_size)


def images_per_cpu_s(arch: str, width: float, rates: Rates = MINI_IMAGES_PER_CPU_S) -> tuple[float, float]:
    """Measured (training, evaluation) rates at (arch, width), else the arch's first entry scaled by width²."""
    if (arch, width) in rates:
        return rates[arch, width]
    (_, ref_width), (train, evaluate) = next((k, r) for k, r in rates.items() if k[0] == arch)
    factor = (ref_width / width) ** 2
    return train * factor, evaluate * factor


def estimate_minutes(name: str, scale: str, rates: Rates, workers: int = 2) -> float:
    """Estimated wall minutes of study ``name`` at ``scale`` at ``rates`` with ``workers`` one-thread workers on
    as many free cores: the runs handed out in the sweep's order (setting by setting, seed by seed) to the first
    free worker, as ``gst sweep --dry-run`` simulates them: the runs the sweep makes (settings that coincide at a
    scale, or share a baseline as Figure 5 does, are one run)."""
    from gstlab.study import expand, study_from_dict  # noqa: PLC0415 (study imports the presets)

    runs = expand(study_from_dict(study_dict(name, scale)))
    return pool_seconds([cfg_seconds(r.cfg, rates) for r in runs], workers) / 60
