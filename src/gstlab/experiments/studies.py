"""Study presets: every figure and table of the paper (PAPER_SPEC §12) as a study of run presets.

Seeds per scale: ``paper`` uses the official replicate counts (10; 5 for Figure 3); ``cpu`` uses as many as
fit the "whole figure in under an hour on 2 cores" budget (estimated from measured throughput, see
``estimate_minutes``); ``smoke`` uses 1-2. Figure 6 and E1-E6 reuse Figure 2's VGG runs (same run ids, so a
shared ``--store`` trains them once); the Figure 5 and D2 baselines are the Figure 2 / Figure 5 runs the paper
took them from.
"""

from __future__ import annotations

from gstlab.config import ConfigError
from gstlab.experiments.presets import SCALES, preset_config

F2_VGG = [f"F2_VGG_{i}" for i in range(6)]
F3 = [f"F3_{s}_{p}" for s in "SRL" for p in (4, 20, 40, 60, 100, 200, 300)]

STUDIES: dict[str, dict] = {
    "fig2_vgg": {"figure": "figure2", "settings": F2_VGG, "seeds": {"paper": 10, "cpu": 3, "smoke": 2}},
    "fig2_resnet": {"figure": "figure2", "settings": [f"F2_RN_{i}" for i in range(4)],
                    "seeds": {"paper": 10, "cpu": 2, "smoke": 2}},
    "fig3": {"figure": "figure3", "settings": F3, "seeds": {"paper": 5, "cpu": 1, "smoke": 1}},
    "fig4": {"figure": "figure4", "settings": [f"F4_{d}_{i}" for d in (18, 20, 56) for i in (0, 1)],
             "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "fig5": {"figure": "figure5", "settings": ["F2_VGG_0"] + [f"F5_{i}" for i in range(7)],
             "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "fig6": {"figure": "figure6", "settings": F2_VGG, "seeds": {"paper": 10, "cpu": 3, "smoke": 2}},
    "figB2_vgg": {"figure": "figureB2", "settings": ["F2_VGG_0"] + [f"FB2_VGG_{i}" for i in (1, 2, 3)],
                  "seeds": {"paper": 10, "cpu": 3, "smoke": 1}},
    "figB2_resnet": {"figure": "figureB2", "settings": ["F2_RN_0"] + [f"FB2_RN_{i}" for i in (1, 2, 3)],
                     "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "figC3": {"figure": "figureC3", "settings": [f"FC3_{i}" for i in range(3)],
              "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "figD2": {"figure": "figureD2", "settings": ["F2_VGG_0", "F5_0"] + [f"FD2_{i}" for i in range(4)],
              "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "figE": {"figure": "figureE", "settings": F2_VGG, "seeds": {"paper": 10, "cpu": 3, "smoke": 2}},
    "tableC1": {"figure": "tableC1", "settings": [f"TC1_{i}" for i in (1, 2, 3)],
                "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
    "tableF1": {"figure": "tableF1", "settings": [f"TF1_{i}" for i in range(4)],
                "seeds": {"paper": 10, "cpu": 2, "smoke": 1}},
}

# Training throughput of the whole reference machine (2-core x86-64 CPU, torch 2.13 CPU, fp32; two workers of
# one thread each), in training images per second *including* the epoch's evaluations, by (architecture, width),
# on 8,000 Fashion-MNIST images with 5,000 test images. Measured: VGG from the Figure 2 cpu study, ResNets from
# 2-epoch cpu-scale runs, two at a time. Other widths scale from the first entry by width squared.
CPU_IMAGES_PER_S = {("vgg11_bn", 0.125): 2000.0, ("resnet18", 0.125): 750.0, ("resnet18", 0.25): 290.0,
                    ("resnet20", 0.25): 1290.0, ("resnet56", 0.25): 460.0}
RUN_OVERHEAD_S = 10.0  # process start and data loading
PROBE_S = 60.0  # one cpu-scale VGG flatness probe (Lanczos top-20 on 256 images, 5 eps directions), measured


def study_dict(name: str, scale: str) -> dict:
    """The study mapping of study preset ``name`` at ``scale`` (what a study YAML would hold)."""
    if name not in STUDIES:
        raise ConfigError(f"--study: unknown study preset {name!r}; allowed: {', '.join(STUDIES)}")
    if scale not in SCALES:
        raise ConfigError(f"--scale: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    spec = STUDIES[name]
    return {"name": f"{name}@{scale}", "figure": spec["figure"], "scale": scale, "seeds": spec["seeds"][scale],
            "settings": [{"preset": p} for p in spec["settings"]]}


def run_seconds(preset: str, scale: str) -> float:
    """Estimated seconds of one run on the reference CPU (throughput scaled by width squared off the cpu width)."""
    cfg = preset_config(preset, scale)
    arch, width = cfg["model"]["arch"], cfg["model"].get("width", 1.0)
    size = cfg.get("data", {}).get("train_subset") or 50000
    rate = cpu_images_per_s(arch, width)
    probes = cfg.get("probes", {})
    probe_s = PROBE_S * probes.get("samples", 512) / 256 * cpu_images_per_s("vgg11_bn", 0.125) / rate
    return cfg["train"]["epochs"] * size / rate + RUN_OVERHEAD_S + len(probes.get("epochs", [])) * probe_s


def cpu_images_per_s(arch: str, width: float) -> float:
    """Measured rate at (arch, width), else the arch's first measured rate scaled by width squared."""
    if (arch, width) in CPU_IMAGES_PER_S:
        return CPU_IMAGES_PER_S[arch, width]
    (_, ref_width), rate = next((key, r) for key, r in CPU_IMAGES_PER_S.items() if key[0] == arch)
    return rate * (ref_width / width) ** 2


def estimate_minutes(name: str, scale: str) -> float:
    """Estimated wall minutes of study ``name`` at ``scale`` on the reference 2-core CPU."""
    spec = STUDIES[name]
    return sum(run_seconds(p, scale) for p in spec["settings"]) * spec["seeds"][scale] / 60
