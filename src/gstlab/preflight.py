"""Checks that need the model: its size (built on the meta device, so nothing is allocated), the layers a
schedule names, and whether enough parameters survive for the Hessian probes. They run in ``runner.prepare``,
before the run directory is created, and raise ConfigError (exit 2)."""

from __future__ import annotations

import functools
import os

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from gstlab import config as C
from gstlab.data import BUILT_IN, check_image_size, check_subsets
from gstlab.errors import one_line
from gstlab.models import build_model, units_from_names
from gstlab.parts import DEFAULT_PARTS, PRUNABLE
from gstlab.pruning.schedule import LayerPlan, event_epochs

_BATCHNORM = torch.nn.modules.batchnorm._BatchNorm
_NORMS = (_BATCHNORM, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.instancenorm._InstanceNorm)
# ops whose output channels mix their input's: a layer's lineage ends there (its units no longer map 1:1)
_MIXING = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                     "convolution", "_convolution", "linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm",
                     "bmm", "mv", "addmm", "addmv", "addbmm", "baddbmm", "einsum", "tensordot", "group_norm",
                     "layer_norm", "softmax", "log_softmax", "normalize"})
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


class _Lineage(TorchFunctionMode):
    """Which Conv/Linear outputs each tensor derives from, through every op whose result keeps its input's batch
    and channel dimensions (ReLU, dropout, pooling, in-place ops, sums). An op that mixes channels (``_MIXING``)
    starts a lineage of its own, so a normalization after it is known not to be fed by the layer before it.
    Every tensor it labels is held, so no later tensor can reuse its id."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, frozenset[str]] = {}
        self.held: list[torch.Tensor] = []

    def of(self, tensor: torch.Tensor) -> frozenset[str]:
        return self.sources.get(id(tensor), frozenset())

    def mark(self, tensor: torch.Tensor, layers: frozenset[str]) -> None:
        self.sources[id(tensor)] = layers
        self.held.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not torch.is_tensor(out) or out.dim() < 2:
            return out
        name = getattr(func, "__name__", "")
        if name in _MIXING:  # a new source (a Conv/Linear module's hook then names its own output)
            self.mark(out, frozenset({f"<{name}, which mixes channels>"}))
            return out
        layers = frozenset().union(*(self.of(t) for t in pytree.tree_leaves((args, kwargs))
                                     if torch.is_tensor(t) and t.dim() >= 2 and t.shape[:2] == out.shape[:2]))
        if layers:
            self.mark(out, layers)
        return out


@torch.no_grad()
def check_fits(model: torch.nn.Module, x: torch.Tensor, classes: int) -> dict[str, str]:
    """ConfigError unless ``model`` maps one input ``x`` (a batch of 1) to ``classes`` logits: a model that does
    not fit its data otherwise fails deep in torch (a shape error, or 'Target 3 is out of bounds' in the loss).
    Eval mode, no gradient: no BatchNorm statistic or random stream changes. Returns which layer feeds each
    normalization (for ``check_batchnorm_pairs``): those whose input derives from exactly one Conv/Linear's
    output. A model with parameters still uninitialized (lazy modules) is skipped (returns {}): its first forward
    would draw its initial weights here."""
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        return {}
    was_training, fed_by, lineage = model.training, {}, _Lineage()
    hooks = [m.register_forward_hook(functools.partial(_record, fed_by, lineage, name))
             for name, m in model.named_modules() if isinstance(m, (*_NORMS, *PRUNABLE))]
    model.eval()
    try:
        with lineage:
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise C.ConfigError(f"model: its forward pass fails on an input of shape {tuple(x.shape[1:])} "
                            f"({one_line(err)}); the model must take the data's inputs (float32)") from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not torch.is_tensor(out) or tuple(out.shape) != (1, classes):
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise C.ConfigError(f"model: one input gives {got}; the data has {classes} classes, so allowed: "
                            f"(batch, {classes}) logits")
    return fed_by


def _record(fed_by: dict[str, str], lineage: _Lineage, name: str, module: torch.nn.Module, inputs: tuple,
            out) -> None:
    """Forward hook of ``check_fits``: a layer's output starts a lineage; a normalization whose (first) input
    derives from one layer only is fed by it."""
    if isinstance(module, _NORMS) and inputs and torch.is_tensor(inputs[0]) and name not in fed_by:
        layers = lineage.of(inputs[0])
        if len(layers) == 1:
            fed_by[name] = next(iter(layers))
    if isinstance(module, PRUNABLE) and torch.is_tensor(out):
        lineage.mark(out, frozenset({name}))


def check_batchnorm_pairs(model: torch.nn.Module, units, fed_by: dict[str, str]) -> None:
    """ConfigError when a unit's BatchNorm is not the one the forward pass applies to its layer's output, or its
    layer's output goes into a normalization masking cannot follow.

    Masking a unit also zeroes its BatchNorm's shift; paired with the wrong BatchNorm (or with none where one
    follows), a "pruned" unit would still output a constant, and the paired one's channel would be cut from
    another layer. Judged, for declared and inferred pairings alike, on ``fed_by`` (from ``check_fits``): a
    normalization whose input derives from one layer's output normalizes that layer. A unit's output may go into
    one BatchNorm (one per unit is masked) and no GroupNorm, LayerNorm, or InstanceNorm with affine parameters or
    running statistics (each would give a dead unit a non-zero output). A normalization without such a link (its
    input mixes two layers, or is reshaped; or it never runs as a module, e.g. used through ``F.batch_norm``)
    is not judged."""
    modules = dict(model.named_modules())
    for unit in units:
        width = modules[unit.module].weight.shape[0]
        fed = [n for n, layer in fed_by.items() if layer == unit.module]
        _refuse_unmaskable(unit, [n for n in fed if not _maskable(modules[n])], modules)
        bns = [n for n in fed if isinstance(modules[n], _BATCHNORM) and modules[n].num_features == width]
        if len(bns) > 1:
            raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} goes into BatchNorms "
                                f"{' and '.join(map(repr, bns))} (a branch, or a layer used twice), and a unit masks "
                                f"one; allowed: a pruned layer whose output reaches one BatchNorm")
        direct = bns[0] if bns else None
        does = None
        if unit.bn is not None and fed_by.get(unit.bn, unit.module) != unit.module:
            does = f"applies {unit.bn!r} to the output of {fed_by[unit.bn]!r}"
        elif direct is not None and direct != unit.bn:
            does = f"applies BatchNorm {direct!r} to the output of {unit.module!r}"
        if does is not None:
            paired = repr(unit.bn) if unit.bn is not None else "no BatchNorm"
            how = " by module declaration order" if unit.bn == units_from_names(model, [unit.module])[0].bn else ""
            raise C.ConfigError(f"unit {unit.name!r}: the forward pass {does}, but it is paired with {paired}{how}; "
                                f"declare PrunableUnit({unit.name!r}, {unit.module!r}, bn={direct!r}) "
                                f"(gstlab.api.run units=, or the model's prunable_units())")


def _maskable(norm: torch.nn.Module) -> bool:
    """A normalization after which a dead unit (all zeros) stays zero: a BatchNorm (its shift, or its running
    mean, is masked) or an InstanceNorm without affine parameters or running statistics."""
    if isinstance(norm, _BATCHNORM):
        return True
    return isinstance(norm, torch.nn.modules.instancenorm._InstanceNorm) and not (
        norm.affine or norm.track_running_stats)


def _refuse_unmaskable(unit, names: list[str], modules: dict[str, torch.nn.Module]) -> None:
    if names:
        found = ", ".join(f"{type(modules[n]).__name__} {n!r}" for n in names)
        raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} goes into {found}, which would give "
                            f"a pruned unit a non-zero output (a shift, or statistics over other units); allowed "
                            f"after a pruned layer: BatchNorm, InstanceNorm without affine or running statistics, "
                            f"or none")


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


def check_training_data(cfg: C.RunConfig, n_train: int, input_shape: tuple[int, ...],
                        model: torch.nn.Module | None) -> None:
    """ConfigError for training data the run could not use as asked: augmentation of inputs that are not
    images, label noise that rounds to no label, and a last batch of one example under BatchNorm (which cannot
    train on it; dropping it would leave an example unseen each epoch). ``model``: None when not known yet."""
    d, batch = cfg.data, cfg.train.batch_size
    if d.augment and len(input_shape) != 3:
        raise C.ConfigError(f"data.augment: random crops and flips need images (C, H, W); {d.name} has inputs of "
                            f"shape {tuple(input_shape)}; allowed: false")
    if d.label_noise > 0 and round(d.label_noise * n_train) == 0:
        raise C.ConfigError(f"data.label_noise: {d.label_noise:g} of {n_train:,} training examples rounds to no "
                            f"noisy label; allowed: 0, or at least {1 / n_train:.3g} (one label)")
    if n_train % batch == 1 and model is not None and any(isinstance(m, _BATCHNORM) for m in model.modules()):
        raise C.ConfigError(f"train.batch_size: {batch} leaves a last batch of 1 of the {n_train:,} training "
                            f"examples, on which the model's BatchNorm cannot train; allowed: a batch size (or "
                            f"data.train_subset) that does not leave one example over")


def check_activation_start(cfg: C.RunConfig, batches_per_epoch: int) -> None:
    """ConfigError when the activation criterion's first event comes before the tracker's first update (the
    ``activation_every``-th training batch): it would have no score to rank by."""
    p = cfg.pruning
    firsts = [(epochs[0], layer.name) for layer in p.layers
              if (epochs := event_epochs(layer.start, layer.end, p.period_of(layer)))]
    if not firsts:
        return
    epoch, name = min(firsts)
    trained = (epoch + 1 - int(p.scratch)) * batches_per_epoch  # a scratch run does not train in epoch 0
    if trained < p.activation_every:
        allowed = f"at most {trained}, or a later start for that layer" if trained else \
            "a criterion without activations (no batch is trained before it)"
        raise C.ConfigError(f"pruning.activation_every: {p.activation_every} training batches before the first "
                            f"activation score, but the first event (layer {name!r}, epoch {epoch}) comes after "
                            f"{trained}; allowed: {allowed}")


def check_sizes(d: C.DataConfig) -> None:
    """What load_data would refuse, for a data set whose sizes and shape are known without loading it."""
    known = data_shape(C.replace(d, image_size=None))
    if known is None:  # a data set registered elsewhere: checked when its run loads it
        return
    check_subsets(d, *data_sizes(C.replace(d, train_subset=None, test_subset=None)))
    if d.image_size is not None:
        check_image_size(d.image_size, known[0])


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
            check_sizes(cfg.data)
            key = (cfg.data, cfg.model)
            if key not in seen:
                check_model_size(cfg.model, *known)
                seen[key] = meta_model(cfg.model, *known)
            check_training_data(cfg, data_sizes(cfg.data)[0], known[0], seen[key])
            if seen[key] is None:
                continue
            C.validate(cfg, [u.name for u in DEFAULT_PARTS.units_of(cfg, seen[key])])  # as the run finds them
        except C.ConfigError as err:
            raise C.ConfigError(f"setting {run.setting!r}: {err}") from None
