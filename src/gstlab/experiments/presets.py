"""Run presets: every configuration of the paper (docs/paper.md#run-configurations) at three scales.

- ``paper``: the exact setting of the official scripts (CIFAR-10/100, full width, 325/165/4000 epochs).
- ``mini``: a faithful miniature that keeps the paper's clock: the same epochs, LR milestones, pruning
  starts, ends, periods, fractions and event epochs (Table F1 alone runs a 10x shorter clock that keeps every
  invariant), made cheap per epoch instead: Fashion-MNIST at 16x16 (the offline default), 2,000 training and
  2,000 test images, narrower networks. Intervention windows keep their share of a retrain period in batches.
  A Figure 2 VGG run takes about 3 minutes on one CPU core.
- ``smoke``: a pipeline check in well under a minute: a few hundred images, a very narrow network, 3 epochs.
  It keeps no invariant of the paper's schedule (by design; ``gst presets`` says so).

Presets are Python data (not YAML) because the two smaller scales are *derived* from the paper scale by one
rule; ``gst presets --show NAME --scale S`` prints the resolved YAML.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from gstlab.config import ConfigError

SCALES = ("smoke", "mini", "paper")
# the schedule invariants a scale does not keep (tests/test_scale_invariants.py checks the rest)
INVARIANTS = ("event epochs", "non-empty events", "staggered layers", "milestones between events", "distinct runs")
INVARIANT_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "smoke": INVARIANTS,  # 3 epochs: a pipeline check, not a miniature
    "mini": (),  # the paper's clock (Table F1: a 10x shorter clock with the same events)
    "paper": (),
}

# ------------------------------------------------------------------------------------------- paper bases
_ADAM_325 = {
    "optim": {"name": "adam", "lr": 1e-3, "milestones": [150, 300]},
    "train": {"epochs": 325, "batch_size": 128, "eval_batch_size": 256, "precision": "fp32"},
}
_SGD_165 = {
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "milestones": [83, 125]},
    "train": {"epochs": 165, "batch_size": 128, "eval_batch_size": 256, "precision": "fp32"},
    "data": {"augment": True},
}
_ADAM_4000 = {
    "optim": {"name": "adam", "lr": 1e-4, "milestones": [2000]},
    "train": {"epochs": 4000, "batch_size": 128, "eval_batch_size": 256, "precision": "fp32"},
    "data": {"name": "cifar100", "augment": True},
}

VGG_LAYERS = [("conv5", 0.3, 3, 150), ("conv6", 0.3, 4, 150), ("conv7", 0.3, 5, 150), ("conv8", 0.9, 6, 275)]
RN_BLOCK4 = ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
RN_LAYERS = list(zip(RN_BLOCK4, (0.25, 0.4, 0.25, 0.95), (7, 8, 9, 10), (150, 150, 170, 275)))


def _layers(spec, starts=None) -> list[dict]:
    out = []
    for i, (name, frac, start, end) in enumerate(spec):
        out.append({"name": name, "fraction": frac, "start": start if starts is None else starts[i], "end": end})
    return out


def _block_convs(arch: str) -> list[str]:
    blocks = {"resnet18": (4, 2), "resnet20": (3, 3), "resnet56": (3, 9)}[arch]
    return [f"layer{s}.{b}.conv{c}" for s in range(1, blocks[0] + 1) for b in range(blocks[1]) for c in (1, 2)]


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Preset:
    name: str
    figure: str  # the paper's figure/table
    label: str  # the method's label in that figure
    family: str  # which scaling rule applies: vgg | resnet18 | resnet_sgd | long
    paper: dict


def _vgg(name, figure, label, pruning=None, **extra) -> Preset:
    base = _merge(_ADAM_325, {"data": {"name": "cifar10"}, "model": {"arch": "vgg11_bn"}})
    if pruning is not None:
        base["pruning"] = pruning
    return Preset(name, figure, label, "vgg", _merge(base, extra))


def _vgg_pruning(period, side, criterion="l2", **extra) -> dict:
    return {"criterion": criterion, "side": side, "period": period, "layers": _layers(VGG_LAYERS), **extra}


def _rn18(name, figure, label, pruning=None, fracs=None, starts=None) -> Preset:
    base = _merge(_ADAM_325, {"data": {"name": "cifar10"}, "model": {"arch": "resnet18"}})
    if pruning is not None:
        spec = RN_LAYERS if fracs is None else [(n, f, s, e) for (n, _, s, e), f in zip(RN_LAYERS, fracs)]
        base["pruning"] = {**pruning, "layers": _layers(spec, starts)}
    return Preset(name, figure, label, "resnet18", base)


def _build() -> dict[str, Preset]:
    p: list[Preset] = []
    flat = {"probes": {"epochs": [314], "top_k": 100, "method": "power", "grad_moment": True,
                       "eps_directions": 10}}
    p.append(_vgg("F2_VGG_0", "Figure 2", "No Pruning", **flat))
    p.append(_vgg("F2_VGG_1", "Figure 2", "Prune_S 1%", _vgg_pruning(4, "smallest"), **flat))
    p.append(_vgg("F2_VGG_2", "Figure 2", "Prune_S 13%", _vgg_pruning(40, "smallest"), **flat))
    p.append(_vgg("F2_VGG_3", "Figure 2", "Prune_R 13%", _vgg_pruning(40, "random"), **flat))
    p.append(_vgg("F2_VGG_4", "Figure 2", "Prune_L 13%", _vgg_pruning(40, "largest"), **flat))
    scratch = {"criterion": "l2", "side": "smallest", "period": 4, "scratch": True,
               "layers": [{"name": n, "fraction": f, "start": 0, "end": 0} for n, f, _, _ in VGG_LAYERS]}
    p.append(_vgg("F2_VGG_5", "Figure 2", "Scratch Pruning", scratch, **flat))
    act = {"criterion": "activation"}
    p.append(_rn18("F2_RN_0", "Figure 2", "No Pruning"))
    p.append(_rn18("F2_RN_1", "Figure 2", "Prune_S 1%", {**act, "side": "smallest", "period": 4}))
    p.append(_rn18("F2_RN_2", "Figure 2", "Prune_S 14%", {**act, "side": "smallest", "period": 40}))
    p.append(_rn18("F2_RN_3", "Figure 2", "Prune_L 14%", {**act, "side": "largest", "period": 40}))
    for side, tag in (("smallest", "S"), ("random", "R"), ("largest", "L")):
        for period in (4, 20, 40, 60, 100, 200, 300):
            rate = 90 / len(range(6, 276, period))
            p.append(_vgg(f"F3_{tag}_{period}", "Figure 3", f"Prune_{tag} {rate:.2f}%", _vgg_pruning(period, side)))
    for arch, depth in (("resnet18", 18), ("resnet20", 20), ("resnet56", 56)):
        layers = [{"name": n, "fraction": 0.1, "start": 40, "end": 100} for n in _block_convs(arch)]
        for i, (period, label) in enumerate(((30, "Prune_S 3%"), (60, "Prune_S 5%"))):
            cfg = _merge(_SGD_165, {"data": {"name": "cifar10"}, "model": {"arch": arch},
                                    "pruning": {"criterion": "l1", "side": "smallest", "period": period,
                                                "layers": layers}})
            p.append(Preset(f"F4_{depth}_{i}", "Figure 4", label, "resnet_sgd", cfg))
    p.append(_vgg("F5_0", "Figure 5", "Prune_L", _vgg_pruning(40, "largest", bn_masking=False)))
    for i, (kind, n) in enumerate([("zero", 1), ("zero", 50), ("zero", 1105),
                                   ("gaussian", 1), ("gaussian", 50), ("gaussian", 1105)], start=1):
        label = f"{'Zeroing' if kind == 'zero' else 'Gaussian'} {n}"
        p.append(_vgg(f"F5_{i}", "Figure 5", label, _vgg_pruning(40, "largest"),
                      intervention={"kind": kind, "batches": n}, train={"eval_batch_size": 128}))
    for i, (period, side, label) in enumerate(((4, "smallest", "Prune_S 1%"), (40, "smallest", "Prune_S 13%"),
                                               (40, "largest", "Prune_L 13%")), start=1):
        p.append(_vgg(f"FB2_VGG_{i}", "Figure B2", label, _vgg_pruning(period, side, "ebn")))
        p.append(_rn18(f"FB2_RN_{i}", "Figure B2", label.replace("13", "14"),
                       {"criterion": "ebn_signed", "side": side, "period": period}, starts=(3, 4, 5, 6)))
    c3 = _merge(_SGD_165, {"data": {"name": "cifar10"}, "model": {"arch": "resnet18"}})
    for i, (frac, label) in enumerate(((0.1, "Prune_S 10% Total"), (0.06, "Prune_S 6% Total"))):
        layers = [{"name": n, "fraction": frac, "start": 24, "end": 100} for n in _block_convs("resnet18")]
        cfg = _merge(c3, {"pruning": {"criterion": "l1", "side": "smallest", "period": 1, "layers": layers}})
        p.append(Preset(f"FC3_{i}", "Figure C3", label, "resnet_sgd", cfg))
    p.append(Preset("FC3_2", "Figure C3", "No Pruning", "resnet_sgd", c3))
    for i, label in enumerate((89, 630, 1220, 2480)):  # official cumu_{129,750,1500,3000}: training batches
        p.append(_vgg(f"FD2_{i}", "Figure D2", f"Zeroing {label}", _vgg_pruning(40, "largest"),
                      intervention={"kind": "zero_restore", "batches": label}))
    for i, (period, side, label) in enumerate(((4, "smallest", "Prune_S 1%"), (40, "smallest", "Prune_S 13%"),
                                               (40, "largest", "Prune_L 13%")), start=1):
        p.append(_rn18(f"TC1_{i}", "Table C1", label, {**act, "side": side, "period": period},
                       fracs=(0.25, 0.8, 0.25, 0.95)))
    long_base = _merge(_ADAM_4000, {"model": {"arch": "resnet18"}})
    tf1 = [{"name": "layer4.1.conv2", "fraction": 0.7, "start": 2500, "end": 3500}]
    p.append(Preset("TF1_0", "Table F1", "No Pruning", "long", long_base))
    for i, side in ((1, "largest"), (2, "smallest")):
        cfg = _merge(long_base, {"pruning": {"criterion": "l1", "side": side, "period": 750, "layers": tf1}})
        p.append(Preset(f"TF1_{i}", "Table F1", f"Prune_{side[0].upper()} 15%", "long", cfg))
    scratch_tf1 = {"criterion": "l2", "side": "largest", "period": 3, "scratch": True,
                   "layers": [{"name": "layer4.1.conv2", "fraction": 0.7, "start": 0, "end": 0}]}
    p.append(Preset("TF1_3", "Table F1", "Scratch 15%", "long", _merge(long_base, {"pruning": scratch_tf1})))
    return {preset.name: preset for preset in p}


# ---------------------------------------------------------------------------------------------- scaling
# Per family and scale: data/model/train/probe overrides. A rule that sets train.epochs changes the clock by the
# time factor f = epochs_scaled / epochs_paper; `mini` keeps f = 1 (the paper's clock) except for Table F1's
# 4,000 epochs (f = 1/10, every invariant of tests/test_scale_invariants.py still holds). Intervention windows
# keep their share of training in batches. Choices and measurements: docs/decisions.md ("Scales").
_SMALL_DATA = {"name": "fashion_mnist", "image_size": 16, "augment": False}
_MINI_DATA = {**_SMALL_DATA, "train_subset": 2000, "test_subset": 2000}
_SMOKE_DATA = {**_SMALL_DATA, "train_subset": 256, "test_subset": 256}
# mini VGG: conv1-4 at 1/8 of the paper's widths (most of the compute at 16x16), conv5-8 (the pruned layers)
# at 1/4, so that every event of the 1% schedules removes at least one filter and conv8 keeps 13 of 128.
MINI_VGG_CHANNELS = [8, 16, 32, 32, 128, 128, 128, 128]
# flatness at mini scale: the paper's 512 Hessian images and 10 eps directions; Lanczos top-20 instead of
# power iteration top-100 (Lanczos top-20 took 59 Hessian-vector products; top-100 needs several hundred
# stored Lanczos vectors and as many products per probe)
_MINI_PROBES = {"top_k": 20, "method": "lanczos", "samples": 512, "eps_directions": 10}
SCALE_RULES: dict[str, dict[str, dict]] = {
    "vgg": {
        "mini": {"data": _MINI_DATA, "model": {"channels": MINI_VGG_CHANNELS},
                 "train": {"eval_batch_size": 1000}, "probes": _MINI_PROBES},
        "smoke": {"data": _SMOKE_DATA, "model": {"width": 0.0625}, "train": {"epochs": 3},
                  "probes": {**_MINI_PROBES, "top_k": 5, "samples": 64, "eps_directions": 2}},
    },
    "resnet18": {  # width 3/8: layer4.1.conv1 (25% over 41 events) still removes a channel at every event
        "mini": {"data": _MINI_DATA, "model": {"width": 0.375}, "train": {"eval_batch_size": 1000}},
        "smoke": {"data": _SMOKE_DATA, "model": {"width": 0.0625}, "train": {"epochs": 3}},
    },
    "resnet_sgd": {  # full width: 10% of a 16-channel layer is one channel, as in the paper (width set per preset)
        "mini": {"data": {**_MINI_DATA, "augment": True}, "model": {"width": 1.0},
                 "train": {"eval_batch_size": 1000}},
        "smoke": {"data": {**_SMOKE_DATA, "augment": True}, "model": {"width": 0.125}, "train": {"epochs": 3}},
    },
    "long": {  # Table F1: 4,000 epochs -> 400 (events 2500/3250 -> 250/325, milestone 2000 -> 200)
        "mini": {"data": {**_MINI_DATA, "augment": True}, "model": {"width": 0.125},
                 "train": {"epochs": 400, "eval_batch_size": 1000}},
        "smoke": {"data": {**_SMOKE_DATA, "augment": True}, "model": {"width": 0.0625}, "train": {"epochs": 4}},
    },
}
# per-preset exceptions to a family's mini rule (the smallest width that keeps every invariant)
MINI_OVERRIDES = {"F4_18_0": {"model": {"width": 0.5}}, "F4_18_1": {"model": {"width": 0.5}}}
PAPER_TRAIN_SIZE = {"cifar10": 50000, "cifar100": 50000, "fashion_mnist": 60000}


def _t(epoch: int, f: float, last: int) -> int:
    return min(int(math.floor(epoch * f + 0.5)), last)


def scale_config(paper: dict, rule: dict) -> dict:
    """Apply a scale rule: overrides, then (if the rule changes train.epochs) every epoch quantity mapped by
    the time factor; intervention windows keep their share of training in batches."""
    e_paper = paper["train"]["epochs"]
    probe_rule = rule.get("probes", {})
    out = _merge(paper, {k: v for k, v in rule.items() if k != "probes"})
    if "probes" in out:  # probe settings scale only where the paper measures flatness
        out["probes"] = _merge(out["probes"], probe_rule)
    e_new = out["train"]["epochs"]
    f, last = e_new / e_paper, e_new - 1
    if f != 1:
        _rescale_clock(out, f, last)
    iv = out.get("intervention")
    if iv and iv.get("batches"):
        iv["batches"] = scaled_window(paper, out)
    return out


def scaled_window(paper: dict, out: dict) -> int:
    """The intervention window of ``out`` (a scaled ``paper`` config) in batches: the paper's share of training
    (hence of the retrain period); a paper window > 1 batch stays > 1 batch so that Figure 5's "1" and "50"
    remain different runs at small scales."""
    batches = paper["intervention"]["batches"]
    f = out["train"]["epochs"] / paper["train"]["epochs"]
    scaled = round(batches * f * _batches_per_epoch(out) / _batches_per_epoch(paper))
    return max(1 if batches == 1 else 2, scaled)


def stale_window(cfg: dict) -> str | None:
    """A warning when ``cfg`` (a run config as a mapping, named PRESET@SCALE) keeps its preset's scaled
    intervention window while its training set or batch size changed the batches per epoch under it (a study's
    `set` of data.train_subset does not rescale the window), else None."""
    name, _, scale = str(cfg.get("name") or "").partition("@")
    iv = cfg.get("intervention") or {}
    paper = PRESETS[name].paper if name in PRESETS else {}
    if scale not in SCALES or not (paper.get("intervention") or {}).get("batches") or iv.get("kind", "none") == "none":
        return None
    preset = preset_config(name, scale)
    scaled_for, has = _batches_per_epoch(preset), _batches_per_epoch(cfg)
    if iv.get("batches") != preset["intervention"]["batches"] or has == scaled_for:
        return None  # the window was set explicitly, or the clock it was scaled for is the run's
    keep = scaled_window(paper, cfg)
    if keep == iv["batches"]:
        return None
    return (f"intervention.batches: {iv['batches']} is {name}'s {scale} window for {scaled_for} batches per "
            f"epoch, but this run has {has}; intervention.batches={keep} keeps the paper's share of training")


def _rescale_clock(out: dict, f: float, last: int) -> None:
    """Map milestones, pruning start/end/period and probe epochs onto a clock ``f`` times the paper's."""
    optim = out.setdefault("optim", {})
    optim["milestones"] = sorted({_t(m, f, last + 1) for m in optim.get("milestones", []) if _t(m, f, last + 1) > 0})
    pruning = out.get("pruning")
    if pruning:
        pruning["period"] = _scaled_period(pruning, f, last)
        for layer in pruning["layers"]:
            layer["start"], layer["end"] = _t(layer["start"], f, last), _t(layer["end"], f, last)
    probes = out.get("probes")
    if probes and probes.get("epochs"):
        probes["epochs"] = sorted({_t(e, f, last) for e in probes["epochs"]})


def _scaled_period(pruning: dict, f: float, last: int) -> int:
    """``period * f`` if it keeps the paper's number of events on the most-pruned layer, else the period that
    keeps it as far as epochs allow."""
    main = max(pruning["layers"], key=lambda layer: layer["fraction"])
    period = pruning.get("period", 4)
    n_events = len(range(main["start"], main["end"] + 1, period))
    start, end = _t(main["start"], f, last), _t(main["end"], f, last)
    proportional = max(1, round(period * f))
    if len(range(start, end + 1, proportional)) == n_events:
        return proportional
    if n_events <= 1:
        return last + 1
    return max(1, (end - start) // (n_events - 1))


def _batches_per_epoch(cfg: dict) -> int:
    data = cfg.get("data", {})
    n = data.get("train_subset") or PAPER_TRAIN_SIZE.get(data.get("name", "fashion_mnist"), 60000)
    return math.ceil(n / cfg.get("train", {}).get("batch_size", 128))


PRESETS = _build()


def preset_config(name: str, scale: str = "paper") -> dict:
    """The config mapping of preset ``name`` at ``scale`` (with ``name`` set to the preset's name)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; see `gst presets` (e.g. {', '.join(list(PRESETS)[:4])})")
    if scale not in SCALES:
        raise ConfigError(f"--scale: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    preset = PRESETS[name]
    if scale == "paper":
        cfg = copy.deepcopy(preset.paper)
    else:
        rule = SCALE_RULES[preset.family][scale]
        if scale == "mini":
            rule = _merge(rule, MINI_OVERRIDES.get(name, {}))
        cfg = scale_config(preset.paper, rule)
    cfg["name"] = f"{name}@{scale}"
    return cfg
