"""Typed, frozen run configuration: YAML in and out, validation that names the field, content-hashed run ids.

A config is a tree of frozen dataclasses. ``from_dict`` checks every key and type against the dataclass
definitions and raises :class:`ConfigError` with the dotted path of the offending field and what is allowed.
``run_id`` hashes only result-affecting fields that differ from their defaults, so adding a new knob with a
default never renames existing runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from gstlab import safeyaml
from gstlab.errors import ConfigError, one_line
from gstlab.registry import Registry, architectures, criteria, datasets

# Fields marked with NOT_RESULT do not change what a run computes (where it runs, how it reports) and stay
# out of the run id.
NOT_RESULT = {"result": False}


class _NotFinite(ConfigError):
    """A number that is nan or infinite (reported as such, also for ``float | None`` fields)."""


@dataclass(frozen=True)
class DataConfig:
    name: Annotated[str, datasets] = "fashion_mnist"  # a registered data set (gstlab.registry.datasets)
    root: str | None = field(default=None, metadata=NOT_RESULT)  # where the files are; None: standard places
    download: bool = field(default=False, metadata=NOT_RESULT)  # fetch (with checksum) if missing
    train_subset: int | None = None  # use this many training examples (a seeded random subset)
    test_subset: int | None = None  # use the first N test examples (fixed, unshuffled)
    normalize: bool = True
    augment: bool = False  # random crop (padding 4) + horizontal flip, on the device
    image_size: int | None = None  # downsample square images to this side by average pooling (None: native)
    # symmetric label noise: this fraction of the training labels (exactly round(p * N) examples, drawn by the data
    # seed) is replaced by a uniformly drawn *different* class; the test set is untouched
    label_noise: float = 0.0
    synthetic_shape: tuple[int, ...] = (3, 32, 32)  # only for name=synthetic
    synthetic_classes: int = 10  # only for name=synthetic
    synthetic_train: int = 1024  # only for name=synthetic
    synthetic_test: int = 512  # only for name=synthetic
    # fingerprint of data given to gstlab.api.run (sizes, sha256 of the tensors); "": the registered data set `name`
    supplied: str = ""


@dataclass(frozen=True)
class ModelConfig:
    arch: Annotated[str, architectures] = "vgg11_bn"  # a registered architecture (gstlab.registry.architectures)
    width: float = 1.0  # channel multiplier (vgg11_bn, resnet*); hidden sizes are given for mlp
    channels: tuple[int, ...] = ()  # vgg11_bn: the 8 conv widths, overriding width (empty: paper's x width)
    vgg_pools: tuple[int, ...] = ()  # vgg11_bn: which of the paper's 5 max-pools (1-5) to keep (empty: first ones)
    hidden: tuple[int, ...] = (256, 256)  # mlp hidden layer widths
    batch_norm: bool = True  # mlp: BatchNorm1d after each hidden Linear
    # fingerprint of a model given to gstlab.api.run (class, architecture, initial state, prunable units);
    # "": the registered architecture `arch`
    supplied: str = ""


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()  # epochs (0-based) after which lr is multiplied by gamma
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 325
    batch_size: int = 128
    eval_batch_size: int = 256
    device: str = field(default="auto", metadata=NOT_RESULT)  # auto | cpu | cuda | cuda:N
    threads: int | None = field(default=None, metadata=NOT_RESULT)  # torch CPU threads for this run (null: as set)
    checkpoint_every: int = field(default=1, metadata=NOT_RESULT)  # epochs between resume checkpoints
    keep_checkpoints: tuple[int, ...] = field(default=(), metadata=NOT_RESULT)  # epochs whose model is kept
    progress: bool = field(default=True, metadata=NOT_RESULT)
    tensorboard: bool = field(default=False, metadata=NOT_RESULT)  # also write TensorBoard events (gstlab.sinks)
    # auto: bf16 autocast for training on CUDA, fp32 on CPU. The run id hashes the *resolved* value (fp32 as
    # absent), see run_id; evaluations are fp32 whatever this says
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata=NOT_RESULT)
    channels_last: Literal["auto", "on", "off"] = field(default="auto", metadata=NOT_RESULT)
    compile: bool = field(default=False, metadata=NOT_RESULT)  # torch.compile the model (training and evaluation)
    # torch.compile's mode; reduce-overhead replays CUDA graphs, which removes the per-kernel launch cost that bounds
    # a paper-width step at batch 128 (benchmarks/README.md, GPU)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = field(default="default", metadata=NOT_RESULT)
    # the optimizer's single-kernel (fused) update; auto: on with CUDA. Not bit-identical to the per-tensor update,
    # like every GPU kernel choice here (GPU runs are not bit-deterministic anyway)
    fused_optimizer: Literal["auto", "on", "off"] = field(default="auto", metadata=NOT_RESULT)


@dataclass(frozen=True)
class LayerSchedule:
    name: str
    fraction: float  # share of the layer's units removed by the end of its schedule, in [0, 1)
    start: int = 0  # first pruning epoch (0-based, pruning happens after training epoch `start`)
    end: int = 0  # last epoch that may prune (inclusive)
    period: int | None = None  # epochs between events; None: pruning.period


@dataclass(frozen=True)
class PruningConfig:
    criterion: Annotated[str, criteria] = "l2"  # a registered score criterion (gstlab.registry.criteria)
    side: Literal["smallest", "random", "largest"] = "smallest"  # Prune_S / Prune_R / Prune_L
    period: int = 4  # retrain period: epochs between events
    scratch: bool = False  # prune once at initialization (epoch 0 is not trained)
    layers: tuple[LayerSchedule, ...] = ()
    bn_masking: bool = True  # False: only conv/linear weights are masked (the Figure 5 "Prune_L" control)
    activation_every: int = 10  # activation score: update every Nth training batch
    activation_momentum: float = 0.9  # activation score: s <- m*s + (1-m)*new

    def period_of(self, layer: LayerSchedule) -> int:
        """A layer's retrain period: its own where it has one, else the schedule's."""
        return layer.period or self.period


@dataclass(frozen=True)
class InterventionConfig:
    kind: Literal["none", "zero", "gaussian", "zero_restore"] = "none"
    batches: int = 0  # N: training batches the intervention lasts
    scale: float | None = None  # gaussian sigma; None: std of the layer's first never-targeted unit (paper)
    count_eval_batches: bool = False  # official-code compatibility: evaluation batches count and are perturbed


@dataclass(frozen=True)
class ProbeConfig:
    epochs: tuple[int, ...] = ()  # epochs (0-based) after which flatness is measured
    at_events: bool = False  # also after every pruning/intervention event
    at_end: bool = False  # also after the last epoch
    samples: int = 512  # probe set: the first N evaluation images
    top_k: int = 10  # Hessian eigenpairs
    method: Literal["lanczos", "power"] = "lanczos"
    # the eigensolver's step cap; None: Lanczos min(dim, max(2k + 20, 3k)) steps, power iteration 20 steps per
    # eigenpair (the paper's). Every row records whether the solver converged within it.
    max_iter: int | None = None
    trace_samples: int = 0  # Hutchinson probes (0: skip)
    grad_moment: bool = True  # trace of the per-example gradient second moment
    eps_directions: int = 0  # eigenvectors swept for eps-flatness (0: skip)
    eps_samples: int | None = None  # the sweep's evaluation set: the first N evaluation images; None: all (paper)
    eps_max: float = 0.4
    eps_step: float = 0.01
    prunability: bool = False  # also measure prunability (Kuhn et al. 2021; gstlab/measures.py)
    prunability_delta: float = 0.1  # training loss may grow by this factor: <= (1 + delta) x unpruned
    prunability_samples: int = 2048  # its fixed training subset: the first N training examples
    pac_bayes: bool = False  # also measure PAC-Bayes flatness (Jiang et al. 2020; gstlab/pac_bayes.py)
    pac_bayes_drop: float = 10.0  # the training accuracy (%) the noise may cost, in points (Jiang et al.: 10)
    pac_bayes_draws: int = 10  # Monte-Carlo draws of the noise per sigma tried
    pac_bayes_samples: int = 2048  # its fixed training subset: the first N training examples
    sharpness: bool = False  # also measure adaptive worst-case sharpness (Andriushchenko et al. 2023; sharpness.py)
    sharpness_rho: float = 0.5  # radius of the perturbation, relative to each weight's size (l2)
    sharpness_steps: int = 20  # projected gradient ascent steps per batch
    sharpness_samples: int = 1024  # its fixed training subset: the first N training examples ...
    sharpness_batch: int = 128  # ... in batches of m, each with its own worst case (m-sharpness)
    sharpness_restarts: int = 1  # random starts of the ascent per batch (the largest increase counts)


# ProbeConfig's optional measurements: switch field -> (what it measures, the fields that set it; a probe row records
# those exactly when it made the measurement)
OPTIONAL_MEASURES = {
    "prunability": ("prunability", ("prunability_delta", "prunability_samples")),
    "pac_bayes": ("PAC-Bayes flatness", ("pac_bayes_drop", "pac_bayes_draws", "pac_bayes_samples")),
    "sharpness": ("adaptive sharpness", ("sharpness_rho", "sharpness_steps", "sharpness_samples", "sharpness_batch",
                                         "sharpness_restarts")),
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    pruning: PruningConfig = PruningConfig()
    intervention: InterventionConfig = InterventionConfig()
    probes: ProbeConfig = ProbeConfig()
    seed: int = 0
    name: str = field(default="", metadata=NOT_RESULT)  # a label; the run id does not depend on it


# --------------------------------------------------------------------------------------------------- parsing


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _registry(tp).allowed()
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_allowed(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of ({_allowed(typing.get_args(tp)[0])})"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    if tp is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, path)
            except _NotFinite:
                raise
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_allowed(tp)}, got {value!r}")
    if origin is Annotated:  # a name in a registry
        if not isinstance(value, str) or value not in _registry(tp):
            raise ConfigError(f"{path}: expected {_allowed(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(tp)):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_allowed(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_allowed(tp)}, got {value!r}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        return _number(value, path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def _registry(tp: Any) -> Registry:
    return next(m for m in typing.get_args(tp)[1:] if isinstance(m, Registry))


FLOAT32_MAX = 3.4028234663852886e38  # training computes in float32: a larger number overflows there


def _number(value: Any, path: str) -> float:
    """A finite float from a YAML number or any string Python's ``float`` reads (YAML 1.1 reads ``1e-3`` as a
    string); nan and inf are refused."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if isinstance(value, int) and abs(value) > 2**1023:  # beyond float's range (float() would overflow)
        raise _NotFinite(f"{path}: expected a finite number, got an integer with {len(str(abs(value)))} digits")
    if not math.isfinite(value):
        raise _NotFinite(f"{path}: expected a finite number, got {value!r}")
    if abs(value) > FLOAT32_MAX:  # the optimizer computes in float32: 1e39 was a traceback mid-run
        raise _NotFinite(f"{path}: expected a number within float32's range (|x| <= 3.4e38), got {value!r}")
    return float(value)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking every key and type."""
    where = path or "config"
    if data is None and path:  # `pruning:` or --set pruning= had silently reset the section to its defaults
        raise ConfigError(f"{path}: expected a mapping of its fields, got null (a section cannot be unset: set its "
                          "fields, or leave the key out for the defaults)")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected {_allowed(cls)}, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key; allowed keys: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required field is missing ({_allowed(hints[f.name])})")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def result_dict(cfg: Any) -> dict:
    """The result-affecting fields that differ from their defaults (what the run id hashes, with the resolved
    precision)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("result", True) is False:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub = result_dict(value)
            if sub:
                out[f.name] = sub
            continue
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if value != default:
            out[f.name] = [result_dict(v) if dataclasses.is_dataclass(v) else v for v in value] if isinstance(
                value, tuple
            ) else value
    return out


def resolved_precision(train: TrainConfig, device_type: str | None = None) -> str:
    """The training precision a run uses: ``fp32`` or ``bf16``. ``auto`` means bf16 on CUDA; the device is
    ``device_type`` or, when not given, where ``train.device`` resolves in this process."""
    if train.precision != "auto":
        return train.precision
    if device_type is None:
        device_type = "cuda" if train.device.startswith("cuda") or (train.device == "auto" and _cuda()) else "cpu"
    return "bf16" if device_type == "cuda" else "fp32"


@functools.cache
def _cuda() -> bool:
    import torch  # noqa: PLC0415 (only for train.device=auto with train.precision=auto)

    return torch.cuda.is_available()


def registered_code(cfg: RunConfig) -> dict[str, str | None]:
    """The fingerprint of the code behind each registry name the run uses (None: gstlab's own)."""
    used = [("pruning.criterion", criteria, cfg.pruning.criterion)]
    if not cfg.model.supplied:
        used.append(("model.arch", architectures, cfg.model.arch))
    if not cfg.data.supplied:
        used.append(("data.name", datasets, cfg.data.name))
    return {key: registry.fingerprint(name) for key, registry, name in used}


def result_revisions(cfg: RunConfig) -> dict[str, int]:
    """Fixes that changed what a config computes, by the part they changed: the configs a fix affects hash its
    revision, so a store never hands back a run computed before the fix under the fixed code's id, while every
    other run keeps its id (docs/decisions.md#run-ids-and-result-revisions)."""
    revisions = {}
    iv = cfg.intervention  # 2: an event's acc_after applies only its own windows (other layers' open ones had been
    if iv.kind != "none" and (not iv.count_eval_batches or iv.kind == "zero_restore"):  # applied too; compat mode
        revisions["intervention"] = 2  # measures the perturbed evaluation); zero_restore zeroes a BN-less bias
    # 3: zero_restore also zeroes the bias and running mean of a unit before a BatchNorm without affine parameters
    # (in eval mode it had put out (b - mean) / std); only a user's model has one, so the zoo's runs keep their ids
    users = bool(cfg.model.supplied or registered_code(cfg).get("model.arch"))
    if iv.kind == "zero_restore" and users:
        revisions["intervention"] = 3
    # 2: activation statistics sum on the axis the data-flow trace finds a unit's units on (after a transpose to
    # (N, D, P) a Linear's had been summed per point); the zoo's units see (N, D) or (N, C, H, W): unchanged
    tracked = cfg.pruning.criterion in criteria and criteria.get(cfg.pruning.criterion).needs_activations
    if tracked and cfg.pruning.layers and users:
        revisions["activation"] = 2
    return revisions


def run_id(cfg: RunConfig) -> str:
    """Content hash of the result-affecting settings (12 hex digits). The precision enters resolved (see
    ``resolved_precision``) and only when it is not fp32, so fp32 runs keep the ids they had before the field
    was hashed, and an fp32 and a bf16 run of one config never share an id."""
    fields = result_dict(cfg)
    precision = resolved_precision(cfg.train)
    if precision != "fp32":
        fields.setdefault("train", {})["precision"] = precision
    registered = {key: fp for key, fp in registered_code(cfg).items() if fp}
    if registered:  # a user's criterion, architecture or data loader: its code is part of the run
        fields["registered"] = registered
    revisions = result_revisions(cfg)
    if revisions:
        fields["revisions"] = revisions
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ overrides


def apply_override(data: dict, assignment: str) -> dict:
    """Apply ``dotted.key=value`` (value parsed as YAML) to a nested dict, in place; returns ``data``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    value = parse_value(key, raw)
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_index(node, part, parts[: i + 1])]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if _is_index(nxt) else {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key.strip()}: {'.'.join(parts[: i + 1])} is {_kind(node)}, not a section "
                              f"or list, so it has no field {nxt!r}")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, parts)] = value
    else:
        node[last] = merged_section(node.get(last), value)
    return data


def merged_section(old: Any, new: Any) -> Any:
    """``new`` over ``old``: a mapping given for a section changes the keys it names and keeps the others (it
    had replaced the whole section, silently resetting them to defaults)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: merged_section(old.get(k), v) for k, v in new.items()}}
    return new


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value), "a value")


def parse_value(key: str, raw: str) -> Any:
    """The YAML value of ``--set KEY=RAW`` (empty: null); ConfigError naming the key if it is not YAML."""
    try:
        return safeyaml.load(raw) if raw.strip() else None
    except (yaml.YAMLError, safeyaml.YamlError) as err:
        raise ConfigError(f"--set {key.strip()}: value {_short(raw)} is not valid YAML "
                          f"({one_line(err, 200)})") from None


def _short(raw: str, limit: int = 60) -> str:
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")





def _is_index(part: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return part.isascii() and part.isdigit()


def _index(node: list, part: str, parts: list[str]) -> int:
    if not _is_index(part) or int(part) >= len(node):
        raise ConfigError(f"{'.'.join(parts)}: no list element {part} (the list has {len(node)})")
    return int(part)


# ----------------------------------------------------------------------------------------------- validation


def validate(cfg: RunConfig, unit_names: list[str] | None = None) -> RunConfig:
    """Semantic checks beyond types. ``unit_names``: the model's prunable layers, when known."""
    _check_positive(cfg)
    _check_bounds(cfg)
    _check_supplied(cfg)
    _check_training(cfg)
    epochs = cfg.train.epochs
    p = cfg.pruning
    names = [layer.name for layer in p.layers]
    for i, layer in enumerate(p.layers):
        where = f"pruning.layers[{i}]"
        if not 0.0 <= layer.fraction < 1.0:
            raise ConfigError(f"{where}.fraction: must be in [0, 1), got {layer.fraction}")
        if layer.start < 0 or layer.end < layer.start:
            raise ConfigError(f"{where}: need 0 <= start <= end, got start={layer.start}, end={layer.end}")
        if layer.end >= epochs:
            raise ConfigError(
                f"{where}.end: the schedule ends at epoch {layer.end} but training ends at epoch "
                f"{epochs - 1} (train.epochs={epochs}); allowed: end <= {epochs - 1}"
            )
        if layer.period is not None and layer.period < 1:
            raise ConfigError(f"{where}.period: must be >= 1, got {layer.period}")
        if p.scratch and (layer.start, layer.end) != (0, 0):
            raise ConfigError(f"{where}: scratch pruning prunes once at epoch 0; set start: 0 and end: 0")
        if unit_names is not None and layer.name not in unit_names:
            raise ConfigError(
                f"{where}.name: unknown layer {layer.name!r}; allowed: {', '.join(unit_names)}" if unit_names else
                f"{where}.name: unknown layer {layer.name!r}; the model declares no prunable units (e.g. units=[] "
                f"given to gstlab.api.run), so allowed: no pruning.layers"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"pruning.layers: a layer is listed twice ({', '.join(names)})")
    iv = cfg.intervention
    if iv.batches < 0:
        raise ConfigError(f"intervention.batches: must be >= 0, got {iv.batches}")
    if iv.scale is not None and iv.scale <= 0:
        raise ConfigError(f"intervention.scale: must be > 0 (or null for the paper's rule), got {iv.scale}")
    if iv.kind != "none" and not p.layers:
        raise ConfigError("intervention.kind: an intervention needs pruning.layers to say what it targets")
    if iv.kind != "none" and p.scratch:
        raise ConfigError("intervention.kind: interventions cannot be combined with pruning.scratch")
    for e in cfg.probes.epochs:
        if not 0 <= e < epochs:
            raise ConfigError(f"probes.epochs: epoch {e} is outside training (0..{epochs - 1})")
    _check_probes(cfg.probes)
    if cfg.probes.prunability_delta <= 0:
        raise ConfigError(f"probes.prunability_delta: must be > 0, got {cfg.probes.prunability_delta}")
    if not 0 < cfg.probes.pac_bayes_drop < 100:
        raise ConfigError(f"probes.pac_bayes_drop: {cfg.probes.pac_bayes_drop}; allowed: accuracy points in (0, 100)")
    if not SHARPNESS_RHO[0] <= cfg.probes.sharpness_rho <= SHARPNESS_RHO[1]:
        raise ConfigError(f"probes.sharpness_rho: {cfg.probes.sharpness_rho}; allowed: a radius in "
                          f"[{SHARPNESS_RHO[0]:g}, {SHARPNESS_RHO[1]:g}]")
    return cfg


def _check_probes(p: ProbeConfig) -> None:
    if p.eps_step <= 0 or p.eps_max <= 0:
        raise ConfigError("probes.eps_step and probes.eps_max: must be > 0")
    if p.eps_step > p.eps_max:
        raise ConfigError(f"probes.eps_step: must be <= probes.eps_max ({p.eps_max}), got {p.eps_step} (the eps "
                          "grid would hold only 0)")
    if p.eps_directions > p.top_k:
        raise ConfigError(f"probes.eps_directions: at most probes.top_k ({p.top_k}) eigenvectors can be swept, got "
                          f"{p.eps_directions}; allowed: 0..{p.top_k}")
    if p.max_iter is not None and p.method == "lanczos" and p.max_iter < p.top_k:
        raise ConfigError(f"probes.max_iter: Lanczos needs at least probes.top_k ({p.top_k}) steps, got {p.max_iter}")


# Upper bounds on size fields: far above every paper setting (325 epochs, width 1, batch 128), low enough that a
# typo (train.epochs=1000000000000) is refused instead of training forever or exhausting memory.
MAX_EPOCHS = 10_000
LIMITS = {
    "train.epochs": MAX_EPOCHS, "train.batch_size": 65_536, "train.eval_batch_size": 65_536,
    "train.threads": 4_096, "data.image_size": 4_096, "data.synthetic_train": 1_000_000,
    "data.synthetic_test": 1_000_000,
    "data.synthetic_classes": 100_000, "model.width": 16.0, "probes.samples": 1_000_000,
    "probes.top_k": 10_000, "probes.trace_samples": 100_000, "probes.eps_directions": 10_000,
    "probes.max_iter": 1_000_000, "probes.pac_bayes_draws": 100_000, "probes.sharpness_steps": 100_000,
    "probes.sharpness_restarts": 10_000,
    "intervention.batches": 100_000_000,
}
SHARPNESS_RHO = (1e-4, 100.0)  # probes.sharpness_rho, relative to each weight (below, fp32 weights barely move)
MAX_UNITS = 65_536  # model.hidden and model.channels widths, data.synthetic_shape sides
MAX_EPS_POINTS = 10_000  # probes.eps_max / probes.eps_step


MAX_DATA_VALUES = 2**31  # synthetic train + test values (8 GiB of float32); CIFAR-10 has 184 million
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")


def _check_training(cfg: RunConfig) -> None:
    """Values that are legal types but would train something else than asked (issue 24)."""
    o, t, d, epochs = cfg.optim, cfg.train, cfg.data, cfg.train.epochs
    if not 0 < o.gamma <= 1:
        raise ConfigError(f"optim.gamma: must be in (0, 1] (the factor lr is multiplied by), got {o.gamma}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum: must be in [0, 1), got {o.momentum}")
    if list(o.milestones) != sorted(set(o.milestones)):
        raise ConfigError(f"optim.milestones: must be strictly increasing, got {list(o.milestones)}")
    # a milestone m takes effect from epoch m (MultiStepLR counts epochs done: it never reaches 0; m = epochs is
    # the end of training); a kept checkpoint is the model after epoch e
    for name, values, low, high in (("optim.milestones", o.milestones, 1, epochs),
                                    ("train.keep_checkpoints", t.keep_checkpoints, 0, epochs - 1)):
        outside = [e for e in values if not low <= e <= high]
        if outside:
            raise ConfigError(f"{name}: epoch {outside[0]} is outside training; allowed: {low}..{high} "
                              f"(train.epochs={epochs})")
    if not DEVICE.fullmatch(t.device):
        raise ConfigError(f"train.device: unknown device {t.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    if d.name == "synthetic":
        if not 1 <= len(d.synthetic_shape) <= 3:
            raise ConfigError(f"data.synthetic_shape: {list(d.synthetic_shape)}; allowed: 1 to 3 sizes, "
                              f"[channels], [channels, length] or [channels, height, width]")
        for name, value, least in (("data.synthetic_classes", d.synthetic_classes, 2),
                                   ("data.synthetic_train", d.synthetic_train, 1),
                                   ("data.synthetic_test", d.synthetic_test, 1)):
            if value < least:
                raise ConfigError(f"{name}: must be >= {least}, got {value}")
        examples = d.synthetic_train + d.synthetic_test
        values = math.prod(d.synthetic_shape) * examples
        if values > MAX_DATA_VALUES:
            raise ConfigError(f"data.synthetic_shape: {list(d.synthetic_shape)} x {examples:,} examples is "
                              f"{values:,} values; allowed: at most {MAX_DATA_VALUES:,}")


def _check_bounds(cfg: RunConfig) -> None:
    for name, limit in LIMITS.items():
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and value > limit:
            raise ConfigError(f"{name}: must be <= {limit:,}, got {value:,}")
    sizes_of = {"model.hidden": cfg.model.hidden, "model.channels": cfg.model.channels,
                "data.synthetic_shape": cfg.data.synthetic_shape}
    for name, sizes in sizes_of.items():
        if any(not 1 <= n <= MAX_UNITS for n in sizes):
            raise ConfigError(f"{name}: every entry must be in [1, {MAX_UNITS:,}], got {list(sizes)}")
    if cfg.train.threads is not None and cfg.train.threads < 1:
        raise ConfigError(f"train.threads: must be >= 1 or null (the process's count), got {cfg.train.threads}")
    p = cfg.probes
    if p.eps_step > 0 and p.eps_max / p.eps_step > MAX_EPS_POINTS:
        raise ConfigError(f"probes.eps_step: the grid 0..eps_max={p.eps_max} in steps of {p.eps_step} has more "
                          f"than {MAX_EPS_POINTS:,} points; use a larger eps_step")


# what only the registries' providers read: unused (and refused when set) for a model or data set the user gave
NOT_FOR_SUPPLIED = {"model": ("arch", "width", "channels", "vgg_pools", "hidden", "batch_norm"),
                    "data": ("name", "root", "download", "normalize", "synthetic_shape", "synthetic_classes",
                             "synthetic_train", "synthetic_test")}


# data fields and the built-in data sets that read them (a user's data set may read any): set for another built-in
# one, they would change the run id and nothing else, so they are refused
READ_BY = {"synthetic_shape": ("synthetic",), "synthetic_classes": ("synthetic",), "synthetic_train": ("synthetic",),
           "synthetic_test": ("synthetic",), "normalize": ("fashion_mnist", "cifar10", "cifar100"),
           "root": ("fashion_mnist", "cifar10", "cifar100"), "download": ("fashion_mnist", "cifar10", "cifar100")}


def check_intent(cfg: RunConfig) -> RunConfig:
    """Fields that the rest of the config makes unread (they would rename the run, or do nothing): refused where a
    user gives a config (``gst run``, a study's runs, ``gstlab.api.run``), not where a stored one is read back (a
    run of an earlier version resumes, and ``gst flatness`` measures it, as written). Returns ``cfg``."""
    if not cfg.data.supplied:
        _check_unread(cfg.data)
    if not cfg.model.supplied:
        _check_unread_model(cfg.model)
    t = cfg.train
    if t.compile_mode != TrainConfig().compile_mode and not t.compile:
        raise ConfigError(f"train.compile_mode: {t.compile_mode!r} is read only with train.compile: true; set both, or "
                          f"remove it")
    return cfg


def _check_unread(d: DataConfig) -> None:
    if not datasets.shipped(d.name):
        return
    default = DataConfig()
    in_id = {f.name for f in dataclasses.fields(DataConfig) if f.metadata.get("result", True)}
    for name, readers in READ_BY.items():
        if d.name not in readers and getattr(d, name) != getattr(default, name):
            effect = "change the run id and nothing else" if name in in_id else "be ignored"
            raise ConfigError(f"data.{name}: not read for data.name {d.name!r} (only for {', '.join(readers)}), so "
                              f"it would {effect}; remove it")


def _check_unread_model(m: ModelConfig) -> None:
    """A shipped architecture's fields that it does not build from: they would rename the run and change nothing
    (``--set model.width=0.25`` on a mini VGG preset, whose ``channels`` give the widths, had done so)."""
    if not architectures.shipped(m.arch):
        return  # a registered builder receives the whole ModelConfig and may read any field
    default = ModelConfig()
    mlp = m.arch == "mlp"
    unread = {"width": "mlp sizes its layers by model.hidden" if mlp else
                       "model.channels gives vgg11_bn's 8 conv widths" if m.channels else "",
              "hidden": "" if mlp else f"{m.arch} is not mlp", "batch_norm": "" if mlp else f"{m.arch} is not mlp"}
    for name, why in unread.items():
        if why and getattr(m, name) != getattr(default, name):
            raise ConfigError(f"model.{name}: not read ({why}), so it would change the run id and nothing else; "
                              f"remove it")


def _check_supplied(cfg: RunConfig) -> None:
    for section, names in NOT_FOR_SUPPLIED.items():
        sub = getattr(cfg, section)
        if not sub.supplied:
            continue
        default = type(sub)()
        for name in names:
            if getattr(sub, name) != getattr(default, name):
                what = "a model" if section == "model" else "data"
                raise ConfigError(f"{section}.{name}: not used for {what} given to gstlab.api.run "
                                  f"({section}.supplied is set); remove it")


def _check_positive(cfg: RunConfig) -> None:
    checks = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "pruning.period": cfg.pruning.period,
        "pruning.activation_every": cfg.pruning.activation_every,
        "probes.samples": cfg.probes.samples,
        "probes.top_k": cfg.probes.top_k,
        "probes.prunability_samples": cfg.probes.prunability_samples,
        "probes.pac_bayes_draws": cfg.probes.pac_bayes_draws,
        "probes.pac_bayes_samples": cfg.probes.pac_bayes_samples,
        "probes.sharpness_steps": cfg.probes.sharpness_steps,
        "probes.sharpness_samples": cfg.probes.sharpness_samples,
        "probes.sharpness_batch": cfg.probes.sharpness_batch,
        "probes.sharpness_restarts": cfg.probes.sharpness_restarts,
    }
    for name, value in checks.items():
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in cfg.name):  # it names progress lines, logs and default --out
        raise ConfigError(f"name: {cfg.name!r} holds a control character; allowed: printable text")
    for name, value in (("probes.trace_samples", cfg.probes.trace_samples),
                        ("probes.eps_directions", cfg.probes.eps_directions)):
        if value < 0:
            raise ConfigError(f"{name}: must be >= 0 (0: skip), got {value}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {cfg.optim.weight_decay}")
    if cfg.model.width <= 0:
        raise ConfigError(f"model.width: must be > 0, got {cfg.model.width}")
    if cfg.model.channels and cfg.model.arch != "vgg11_bn":
        raise ConfigError(f"model.channels: only for vgg11_bn (arch is {cfg.model.arch}); use model.width")
    if cfg.model.vgg_pools and cfg.model.arch != "vgg11_bn":
        raise ConfigError(f"model.vgg_pools: only for vgg11_bn (arch is {cfg.model.arch})")
    if cfg.model.channels and (len(cfg.model.channels) != 8 or min(cfg.model.channels) < 1):
        raise ConfigError(f"model.channels: need 8 positive conv widths (vgg11_bn) or [], "
                          f"got {list(cfg.model.channels)}")
    if not 0 <= cfg.pruning.activation_momentum < 1:
        raise ConfigError(f"pruning.activation_momentum: must be in [0, 1), got {cfg.pruning.activation_momentum}")
    if not 0 <= cfg.data.label_noise < 1:
        raise ConfigError(f"data.label_noise: must be in [0, 1) (a fraction of the training labels), "
                          f"got {cfg.data.label_noise}")
    for name, value in (("data.train_subset", cfg.data.train_subset), ("data.test_subset", cfg.data.test_subset),
                        ("data.image_size", cfg.data.image_size), ("probes.eps_samples", cfg.probes.eps_samples),
                        ("probes.max_iter", cfg.probes.max_iter)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1 or null, got {value}")


# ---------------------------------------------------------------------------------------------------- files


def load_yaml(path: str | Path) -> dict:
    """The mapping in YAML file ``path``; ConfigError if it is unreadable, not UTF-8, not YAML or empty (an
    empty file would silently train the defaults: full-width VGG11 for 325 epochs)."""
    try:
        with open(path, "rb") as f:  # at most one byte past the limit: /dev/zero is not read forever
            raw = f.read(safeyaml.MAX_BYTES + 1)
        text = raw.decode("utf-8") if len(raw) <= safeyaml.MAX_BYTES else None
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); a config is a YAML text file") from None
    except ValueError as err:  # a path the OS cannot take, e.g. with a NUL byte
        raise ConfigError(f"config file {str(path)!r}: not a usable path ({one_line(err)})") from None
    if text is None:
        raise ConfigError(f"config file {path}: larger than {safeyaml.MAX_BYTES:,} bytes; a config is a short YAML "
                          f"text file")
    return yaml_mapping(text, f"config file {path}")


def yaml_mapping(text: str, where: str) -> dict:
    """The non-empty mapping in YAML ``text`` (bounded: gstlab.safeyaml); ConfigError starting with ``where``."""
    try:
        data = safeyaml.load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({one_line(err, 200)})") from None
    except safeyaml.YamlError as err:
        raise ConfigError(f"{where}: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    refuse_empty(data, where)
    return data


def refuse_empty(data: dict | None, where: str) -> None:
    """An empty config (a file, a study's ``inline: {}``, ``api.run({})``) is refused: the defaults alone train a
    full-width VGG11 for 325 epochs, never what an empty config meant."""
    if not data:
        raise ConfigError(f"{where}: is empty; give at least one field (e.g. model.arch), the "
                          f"defaults alone train a full-width VGG11 for 325 epochs")


def parse(data: dict, overrides: list[str] = ()) -> RunConfig:
    """Mapping + ``dotted.key=value`` overrides -> validated RunConfig (layer names checked later)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for assignment in overrides:
        apply_override(data, assignment)
    return validate(from_dict(RunConfig, data))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
