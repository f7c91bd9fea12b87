"""Run presets: every configuration of the paper (PAPER_SPEC §8) at three scales.

- ``paper``: the exact setting of the official scripts (CIFAR-10/100, full width, 325/165/4000 epochs).
- ``cpu``: the same experiment shrunk to run in minutes on a 2-core CPU: Fashion-MNIST (the offline
  default), a narrow network, fewer epochs. Every epoch quantity (pruning start/end/period, LR milestones,
  probe epochs) and every intervention length is mapped by the same time factor ``f = E_cpu / E_paper``
  (rounded; periods and windows at least 1), so the *number* of pruning events and their place in training
  follow the paper's as closely as integer epochs allow.
- ``smoke``: a pipeline check in well under a minute: a few hundred images, a very narrow network, 3 epochs.

Presets are Python data (not YAML) because the two smaller scales are *derived* from the paper scale by one
rule; ``gst presets --show NAME --scale S`` prints the resolved YAML.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from gstlab.config import ConfigError

SCALES = ("smoke", "cpu", "paper")

# ------------------------------------------------------------------------------------------- paper bases
_ADAM_325 = {
    "optim": {"name": "adam", "lr": 1e-3, "milestones": [150, 300]},
    "train": {"epochs": 325, "batch_size": 128, "eval_batch_size": 256},
}
_SGD_165 = {
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "milestones": [83, 125]},
    "train": {"epochs": 165, "batch_size": 128, "eval_batch_size": 256},
    "data": {"augment": True},
}
_ADAM_4000 = {
    "optim": {"name": "adam", "lr": 1e-4, "milestones": [2000]},
    "train": {"epochs": 4000, "batch_size": 128, "eval_batch_size": 256},
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
# Per family and scale: data/model/train overrides and the number of epochs. The time factor is
# epochs_scaled / epochs_paper; intervention windows also scale by the training batches per epoch.
_CPU_DATA = {"name": "fashion_mnist", "train_subset": 8000, "test_subset": 5000, "augment": False}
# flatness at cpu scale: Lanczos top-20 on 256 probe images (paper: power iteration, top-100, 512 images)
_CPU_PROBES = {"top_k": 20, "method": "lanczos", "samples": 256, "eps_directions": 5}
SCALE_RULES: dict[str, dict[str, dict]] = {
    "vgg": {
        "cpu": {"data": _CPU_DATA, "model": {"width": 0.125}, "train": {"epochs": 30}, "probes": _CPU_PROBES},
        "smoke": {"data": {**_CPU_DATA, "train_subset": 512, "test_subset": 512}, "model": {"width": 0.0625},
                  "train": {"epochs": 3}, "probes": {**_CPU_PROBES, "top_k": 5, "samples": 64}},
    },
    "resnet18": {
        "cpu": {"data": _CPU_DATA, "model": {"width": 0.125}, "train": {"epochs": 40}},
        "smoke": {"data": {**_CPU_DATA, "train_subset": 512, "test_subset": 512}, "model": {"width": 0.0625},
                  "train": {"epochs": 3}},
    },
    "resnet_sgd": {
        "cpu": {"data": {**_CPU_DATA, "augment": True}, "model": {"width": 0.25}, "train": {"epochs": 15}},
        "smoke": {"data": {**_CPU_DATA, "train_subset": 512, "test_subset": 512}, "model": {"width": 0.125},
                  "train": {"epochs": 3}},
    },
    "long": {
        "cpu": {"data": {**_CPU_DATA, "augment": True}, "model": {"width": 0.125}, "train": {"epochs": 40}},
        "smoke": {"data": {**_CPU_DATA, "train_subset": 512, "test_subset": 512}, "model": {"width": 0.0625},
                  "train": {"epochs": 4}},
    },
}
PAPER_TRAIN_SIZE = {"cifar10": 50000, "cifar100": 50000, "fashion_mnist": 60000}


def _t(epoch: int, f: float, last: int) -> int:
    return min(int(math.floor(epoch * f + 0.5)), last)


def scale_config(paper: dict, rule: dict) -> dict:
    """Apply a scale rule: overrides, then every epoch quantity mapped by the time factor."""
    e_paper = paper["train"]["epochs"]
    probe_rule = rule.get("probes", {})
    out = _merge(paper, {k: v for k, v in rule.items() if k != "probes"})
    if "probes" in out:  # probe settings scale only where the paper measures flatness
        out["probes"] = _merge(out["probes"], probe_rule)
    e_new = out["train"]["epochs"]
    f, last = e_new / e_paper, e_new - 1
    optim = out.setdefault("optim", {})
    optim["milestones"] = sorted({_t(m, f, e_new) for m in optim.get("milestones", []) if _t(m, f, e_new) > 0})
    pruning = out.get("pruning")
    if pruning:
        pruning["period"] = _scaled_period(pruning, f, last)
        for layer in pruning["layers"]:
            layer["start"], layer["end"] = _t(layer["start"], f, last), _t(layer["end"], f, last)
    probes = out.get("probes")
    if probes and probes.get("epochs"):
        probes["epochs"] = sorted({_t(e, f, last) for e in probes["epochs"]})
    iv = out.get("intervention")
    if iv and iv.get("batches"):
        # same share of training (hence of the retrain period); a paper window > 1 batch stays > 1 batch so
        # that Figure 5's "1" and "50" remain different runs at small scales
        scaled = round(iv["batches"] * f * _batches_per_epoch(out) / _batches_per_epoch(paper))
        iv["batches"] = max(1 if iv["batches"] == 1 else 2, scaled)
    return out


def _scaled_period(pruning: dict, f: float, last: int) -> int:
    """The period that keeps the paper's number of events on the most-pruned layer (as far as epochs allow)."""
    main = max(pruning["layers"], key=lambda layer: layer["fraction"])
    n_events = len(range(main["start"], main["end"] + 1, pruning.get("period", 4)))
    span = _t(main["end"], f, last) - _t(main["start"], f, last)
    if n_events <= 1:
        return last + 1
    return max(1, span // (n_events - 1))


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
        cfg = scale_config(preset.paper, SCALE_RULES[preset.family][scale])
    cfg["name"] = f"{name}@{scale}"
    return cfg
