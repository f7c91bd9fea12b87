"""Checks that need the model: its size (built on the meta device, so nothing is allocated), the layers a
schedule names, and whether enough parameters survive for the Hessian probes. They run in ``runner.prepare``,
before the run directory is created, and raise ConfigError (exit 2)."""

from __future__ import annotations

import os

import torch

from gstlab import config as C
from gstlab.data import BUILT_IN
from gstlab.errors import one_line
from gstlab.models import build_model, units_from_names
from gstlab.parts import DEFAULT_PARTS, PRUNABLE
from gstlab.pruning.schedule import LayerPlan, event_epochs

MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights (12 GB with Adam's moments); the paper's VGG11 has 9 million


def check_model_size(cfg: C.ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    """ConfigError if the model ``cfg`` would have more than MAX_PARAMS parameters (counted without allocating).
    A model given to gstlab.api.run (``cfg.supplied``) is the caller's: not checked."""
    if cfg.supplied:
        return
    model = meta_model(cfg, input_shape, num_classes)
    if model is None:
        return
    total = sum(p.numel() for p in model.parameters())
    if total > MAX_PARAMS:
        raise C.ConfigError(f"model: {total:,} parameters (hidden/channels/width); allowed: at most {MAX_PARAMS:,}")


def meta_model(cfg: C.ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module | None:
    """The model built on the meta device (shapes, no memory); None for an architecture whose constructor needs
    real values (a registered one may call ``.item()``): it is checked when its run builds it."""
    try:
        with torch.device("meta"):
            return build_model(cfg, input_shape, num_classes)
    except C.ConfigError:
        raise
    except Exception:  # noqa: BLE001 (whatever a registered constructor raises on meta tensors)
        return None


@torch.no_grad()
def check_fits(model: torch.nn.Module, x: torch.Tensor, classes: int) -> list[str]:
    """ConfigError unless ``model`` maps one input ``x`` (a batch of 1) to ``classes`` logits: a model that does
    not fit its data otherwise fails deep in torch (a shape error, or 'Target 3 is out of bounds' in the loss).
    Eval mode, no gradient: no BatchNorm statistic or random stream changes. Returns the names of the modules in
    the order the forward pass first ran them (for ``check_batchnorm_pairs``). A model with parameters still
    uninitialized (lazy modules) is skipped (returns []): its first forward would draw its initial weights here."""
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        return []
    was_training, order = model.training, []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: order.append(name))
             for name, m in model.named_modules() if name]
    model.eval()
    try:
        out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise C.ConfigError(f"model: its forward pass fails on an input of shape {tuple(x.shape[1:])} "
                            f"({one_line(err)}); the model must take the data's inputs") from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not torch.is_tensor(out) or tuple(out.shape) != (1, classes):
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise C.ConfigError(f"model: one input gives {got}; the data has {classes} classes, so allowed: "
                            f"(batch, {classes}) logits")
    return list(dict.fromkeys(order))  # first runs only (a module may run twice)


def check_batchnorm_pairs(model: torch.nn.Module, units, order: list[str]) -> None:
    """ConfigError when a unit is paired with a BatchNorm by module declaration order and the forward pass
    normalizes its layer's output with another one, or applies the paired one elsewhere only.

    Masking a unit also zeroes its BatchNorm's shift; paired with the wrong BatchNorm (or with none where one
    follows), a "pruned" unit would still output a constant, and the paired one's channel would be cut from
    another layer. ``units_from_names`` pairs in declaration order, which need not be the data flow. ``order``
    (from ``check_fits``) is the data flow: after the layer, the first BatchNorm with one feature per unit before
    the next Conv/Linear. A paired BatchNorm the forward pass never runs as a module (e.g. used through
    ``F.batch_norm``) is not judged. A unit whose BatchNorm differs from the declaration-order one was declared
    deliberately (e.g. none for a residual output): it is left as declared."""
    modules = dict(model.named_modules())
    for unit in units:
        if unit.module not in order or unit.bn != units_from_names(model, [unit.module])[0].bn:
            continue
        applied = _batchnorm_after(unit.module, modules, order)
        if unit.bn != applied and (applied is not None or unit.bn in order):
            paired = repr(unit.bn) if unit.bn is not None else "no BatchNorm"
            does = (f"applies BatchNorm {applied!r} to the output of {unit.module!r}" if applied is not None else
                    f"applies no BatchNorm to the output of {unit.module!r} ({unit.bn!r} normalizes another layer)")
            raise C.ConfigError(f"unit {unit.name!r}: the forward pass {does}, but it was paired with {paired} by "
                                f"module declaration order; declare PrunableUnit({unit.name!r}, {unit.module!r}, "
                                f"bn={applied!r}) (gstlab.api.run units=, or the model's prunable_units())")


def _batchnorm_after(layer: str, modules: dict[str, torch.nn.Module], order: list[str]) -> str | None:
    """The first BatchNorm with one feature per unit of ``layer`` that runs after it, before the next
    Conv/Linear."""
    units = modules[layer].weight.shape[0]
    for name in order[order.index(layer) + 1:]:
        module = modules[name]
        if isinstance(module, PRUNABLE):
            return None
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.num_features == units:
            return name
    return None


def check_threads(cfg: C.TrainConfig) -> None:
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cores:
        raise C.ConfigError(f"train.threads: {cfg.threads} asked but this machine has {cores} CPU cores; "
                            f"allowed: 1..{cores} or null (all)")


def surviving_parameters(cfg: C.RunConfig, model: torch.nn.Module, units) -> int:
    """Parameters left when every scheduled layer has lost its whole fraction (what the last probe sees)."""
    total = sum(p.numel() for p in model.parameters())
    by_name = {u.name: u for u in units}
    removed = 0
    for layer in cfg.pruning.layers:
        unit = by_name[layer.name]
        module = model.get_submodule(unit.module)
        n = int(module.weight.shape[0])
        per_unit = module.weight[0].numel() + (module.bias is not None)
        if unit.bn is not None and cfg.pruning.bn_masking:
            per_unit += 2
        epochs = tuple(event_epochs(layer.start, layer.end, cfg.pruning.period_of(layer)))
        removed += per_unit * sum(LayerPlan(layer.name, n, layer.fraction, epochs).removals().values())
    return total - removed


def check_probes(cfg: C.RunConfig, model: torch.nn.Module, units) -> None:
    """ConfigError when ``probes.top_k`` asks for more eigenvalues than parameters survive the schedule."""
    p = cfg.probes
    if not (p.epochs or p.at_events or p.at_end):
        return
    left = surviving_parameters(cfg, model, units)
    if p.top_k > left:
        raise C.ConfigError(f"probes.top_k: {p.top_k} eigenvalues asked, but only {left:,} parameters survive "
                            f"the pruning schedule; allowed: at most {left:,}")


def data_shape(cfg: C.DataConfig) -> tuple[tuple[int, ...], int] | None:
    """(input shape, classes) a data config yields, without loading the data; None for a data set registered
    elsewhere (gstlab.registry), whose run is checked when it starts."""
    if cfg.name == "synthetic":
        shape, classes = tuple(cfg.synthetic_shape), cfg.synthetic_classes
    elif cfg.name in BUILT_IN:
        shape, classes = BUILT_IN[cfg.name].shape, BUILT_IN[cfg.name].classes
    else:
        return None
    if cfg.image_size is not None and len(shape) == 3:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    return shape, classes


def data_sizes(cfg: C.DataConfig) -> tuple[int, int]:
    """(training, test) examples a run uses: its subsets, else the data set's split sizes (0: a data set
    registered elsewhere, unknown without loading it)."""
    if cfg.name == "synthetic":
        full = (cfg.synthetic_train, cfg.synthetic_test)
    else:
        full = (BUILT_IN[cfg.name].train, BUILT_IN[cfg.name].test) if cfg.name in BUILT_IN else (0, 0)
    return cfg.train_subset or full[0], cfg.test_subset or full[1]


def check_study(runs: list) -> None:
    """Before a sweep writes anything: every run's model size and the layers its schedule names (each distinct
    data + model pair is built once, on the meta device). ``runs``: StudyRuns; ConfigError names the setting."""
    seen: dict[tuple, torch.nn.Module | None] = {}
    for run in runs:
        cfg = run.cfg
        try:
            known = data_shape(cfg.data)
            if known is None or cfg.model.supplied:
                continue
            key = (cfg.data, cfg.model)
            if key not in seen:
                check_model_size(cfg.model, *known)
                seen[key] = meta_model(cfg.model, *known)
            if seen[key] is None:
                continue
            C.validate(cfg, [u.name for u in DEFAULT_PARTS.units_of(cfg, seen[key])])  # as the run finds them
        except C.ConfigError as err:
            raise C.ConfigError(f"setting {run.setting!r}: {err}") from None
