"""Where a model's pruned layers send their output, read from one forward pass, and the checks that masking can
follow it there (``check_units``): a pruned unit must stay dead (all zeros) up to the next layer that mixes
channels, as if it had been removed.

A unit's mask zeroes its weight row and bias and its BatchNorm's shift. That holds a dead unit at zero only
when its output goes, channel for channel, into nothing but ops that keep zero at zero and that one BatchNorm.
The forward pass (eval mode, no gradient, a batch of two) labels every tensor with the Conv/Linear outputs it
derives from, in two kinds: *exact*, through ops that keep the batch and channel dimensions in place (ReLU,
pooling, dropout, sums, crops), and *moved*, through anything else that does not mix channels (a
concatenation, a flatten, a permutation, a channel flip or shuffle). An op that mixes channels (a convolution,
a matrix product, a LayerNorm's statistics) ends both: what follows is another layer's output.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from gstlab import config as C
from gstlab.errors import one_line
from gstlab.models import units_from_names
from gstlab.parts import PRUNABLE

BATCHNORM = torch.nn.modules.batchnorm._BatchNorm
_NORMS = (BATCHNORM, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.instancenorm._InstanceNorm)
# ops whose output channels mix their input's: a layer's lineage ends there (its units no longer map 1:1)
_MIXING = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                     "convolution", "_convolution", "linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm",
                     "bmm", "mv", "addmm", "addmv", "addbmm", "baddbmm", "einsum", "tensordot", "group_norm",
                     "layer_norm", "softmax", "log_softmax", "normalize"})
# ops that keep a tensor's shape but may rearrange its channels (dimension 1), by where their dims are given
_ALL_DIMS = frozenset({"t", "T", "H", "adjoint", "channel_shuffle", "native_channel_shuffle", "fliplr"})
_DIM_AT_1 = {"cumsum": None, "cumprod": None, "cummax": None, "cummin": None, "logcumsumexp": None, "sort": -1,
             "argsort": -1, "index_select": None, "gather": None, "scatter": None, "scatter_add": None,
             "scatter_reduce": None, "index_add": None, "index_copy": None, "index_fill": None,
             "narrow": None}  # the op's dim (its default; None: required) is its second argument
_PAIRS = frozenset({"transpose", "swapaxes", "swapdims", "movedim", "moveaxis"})


@dataclass
class Flow:
    """What one forward pass showed: for each normalization, the layers whose output reached its input, exactly
    (channel for channel) or moved, per call; and how often each module ran (as a module)."""

    exact: dict[str, list[frozenset[str]]] = field(default_factory=lambda: collections.defaultdict(list))
    moved: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    calls: collections.Counter = field(default_factory=collections.Counter)

    @property
    def fed_by(self) -> dict[str, str]:
        """Each normalization fed, channel for channel, by one layer only (in its first call)."""
        return {norm: next(iter(calls[0])) for norm, calls in self.exact.items() if len(calls[0]) == 1}

    def feeds(self, layer: str) -> list[str]:
        """The normalizations ``layer``'s output reaches channel for channel, alone or summed with others."""
        return [norm for norm, calls in self.exact.items() if any(layer in c for c in calls)]


class _Lineage(TorchFunctionMode):
    """Labels each tensor with the layers it derives from: (exact, moved). Every tensor it labels is held, so
    no later tensor can reuse its id."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        self.held: list[torch.Tensor] = []

    def of(self, tensor: torch.Tensor) -> tuple[frozenset[str], frozenset[str]]:
        return self.sources.get(id(tensor), (frozenset(), frozenset()))

    def mark(self, tensor: torch.Tensor, exact: frozenset[str], moved: frozenset[str] = frozenset()) -> None:
        self.sources[id(tensor)] = (exact, moved)
        self.held.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [t for t in pytree.tree_leaves(out) if torch.is_tensor(t) and t.dim() >= 2]
        if not outs:
            return out
        name = getattr(func, "__name__", "")
        if name in _MIXING:  # a new source (a Conv/Linear module's hook then names its own output)
            for t in outs:
                self.mark(t, frozenset({f"<{name}, which mixes channels>"}))
            return out
        exact, moved = frozenset(), frozenset()
        for t in (t for t in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(t) and t.dim() >= 2):
            e, m = self.of(t)
            moved |= m
            keeps = t.shape[:2] == outs[0].shape[:2] and not _rearranges(name, args, kwargs, t.dim())
            exact, moved = (exact | e, moved) if keeps else (exact, moved | e)
        if exact or moved:
            for t in outs:
                self.mark(t, exact, moved)
        return out


def _rearranges(name: str, args: Sequence, kwargs: dict, ndim: int) -> bool:
    """Whether op ``name`` (keeping the shape) may move dimension 0 or 1 of its ``ndim``-d input; unknown
    arrangements count as moving."""
    def norm(d) -> int:
        return d % ndim if isinstance(d, int) else -1

    def flat(v) -> list:
        return list(v) if isinstance(v, (list, tuple)) else [v]

    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # the in-place variant
    if name in _ALL_DIMS:
        return True
    if name == "mT":
        return ndim <= 3
    if name == "permute":
        dims = flat(args[1]) if len(args) == 2 else list(args[1:]) or flat(kwargs.get("dims", []))
        return any(norm(d) != i for i, d in enumerate(dims[:2]))
    if name in _PAIRS:
        dims = [*args[1:3], *(kwargs.get(k) for k in ("dim0", "dim1", "axis0", "axis1", "source", "destination"))]
        moved = [norm(d) for v in dims if v is not None for d in flat(v)]
        return any(d in (0, 1) for d in moved) or (name in ("movedim", "moveaxis") and bool(moved)
                                                   and min(moved) <= 1)
    if name in ("roll", "rot90"):
        dims = kwargs.get("dims", args[2] if len(args) > 2 else (None if name == "roll" else (0, 1)))
        return dims is None or any(norm(d) in (0, 1) for d in flat(dims))
    if name == "flip":
        dims = [d for v in [*args[1:], kwargs.get("dims")] if v is not None for d in flat(v)]
        return any(norm(d) in (0, 1) for d in dims)
    if name == "take_along_dim":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        return dim is None or norm(dim) in (0, 1)
    if name in _DIM_AT_1:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else _DIM_AT_1[name])
        return dim is None or norm(dim) in (0, 1)
    if name == "__getitem__":
        return not _keeps_leading(args[1] if len(args) > 1 else None)
    return False


def _keeps_leading(index) -> bool:
    """Whether indexing with ``index`` leaves dimensions 0 and 1 whole and in place (``x[:, :, 1:]``, ``x[..., 0]``
    on a 4-d tensor is judged moving: conservative)."""
    full = slice(None)
    items = index if isinstance(index, tuple) else (index,)
    return len(items) >= 1 and all(isinstance(i, slice) and i == full for i in items[:2])


@torch.no_grad()
def trace(model: torch.nn.Module, x: torch.Tensor, classes: int) -> Flow:
    """ConfigError unless ``model`` maps the inputs ``x`` (a batch of up to two) to ``classes`` logits each: a
    model that does not fit its data otherwise fails deep in torch. Eval mode, no gradient: no BatchNorm statistic
    or random stream changes. Returns the ``Flow`` of the pass. A model with parameters still uninitialized (lazy
    modules) is not run (an empty Flow): its first forward would draw its initial weights here."""
    flow = Flow()
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        return flow
    _check_dtype(model)
    was_training, lineage = model.training, _Lineage()
    hooks = [m.register_forward_hook(functools.partial(_record, flow, lineage, name))
             for name, m in model.named_modules() if not isinstance(m, torch.jit.ScriptModule)]  # no hooks there
    model.eval()
    try:
        with lineage:
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise C.ConfigError(f"model: its forward pass fails on an input of shape {tuple(x.shape[1:])} "
                            f"({one_line(err)}); the model must take the data's inputs") from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not torch.is_tensor(out) or tuple(out.shape) != (len(x), classes):
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise C.ConfigError(f"model: {len(x)} inputs give {got}; the data has {classes} classes, so allowed: "
                            f"(batch, {classes}) logits")
    return flow


def _check_dtype(model: torch.nn.Module) -> None:
    other = next(((n, p.dtype) for n, p in model.named_parameters() if p.is_floating_point()
                  and p.dtype != torch.float32), None)
    if other is not None:
        raise C.ConfigError(f"model: parameter {other[0]!r} is {other[1]}; allowed: float32 parameters (runs train "
                            f"in float32, or in bf16/fp16 under autocast with train.precision): model.float()")


def _record(flow: Flow, lineage: _Lineage, name: str, module: torch.nn.Module, inputs: tuple, out) -> None:
    """Forward hook of ``trace``: counts the call; a normalization records which layers reach its (first) input;
    a layer's output starts a lineage."""
    flow.calls[name] += 1
    if isinstance(module, _NORMS) and inputs and torch.is_tensor(inputs[0]):
        exact, moved = lineage.of(inputs[0])
        flow.exact[name].append(exact)
        flow.moved[name] |= moved
    if isinstance(module, PRUNABLE) and torch.is_tensor(out):
        lineage.mark(out, frozenset({name}))


def check_units(model: torch.nn.Module, units, flow: Flow) -> None:
    """ConfigError when masking cannot hold a unit's output at zero (see the module's text): its layer shares its
    weight with another module, or its output reaches a normalization that runs more than once, that it reaches
    with its channels moved, that masking cannot follow, or that is not the BatchNorm the unit is paired with. A
    model not traced (an empty Flow: lazy parameters) and a layer the pass did not run are not judged."""
    if not flow.calls:
        return
    modules = dict(model.named_modules())
    shared = _shared_parameters(model)
    fed_by = flow.fed_by
    for unit in units:
        _refuse_tied(unit, shared)
        if not flow.calls[unit.module]:  # not in the eval pass (a training-only branch, or used via F.conv2d)
            continue  # not judged: where its output goes was not seen
        reached = [n for n in (*flow.feeds(unit.module), unit.bn) if n is not None]
        for norm in dict.fromkeys(reached):
            if flow.calls[norm] > 1:
                raise C.ConfigError(f"unit {unit.name!r}: {type(modules[norm]).__name__} {norm!r} runs "
                                    f"{flow.calls[norm]} times in one forward pass, and masking a unit zeroes its "
                                    f"shift for every use; allowed: one normalization module per use")
        moved = [n for n, layers in flow.moved.items() if unit.module in layers and not _zero_anywhere(modules[n])]
        if moved:
            raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} reaches "
                                f"{_named(moved, modules)} with its channels moved or merged (a concatenation, "
                                f"flatten or permutation), where masking cannot follow it: a pruned unit would "
                                f"get a non-zero output; allowed: a pruned layer whose output reaches a "
                                f"normalization channel for channel")
        _check_pairing(model, unit, fed_by, modules)


def check_activations(model: torch.nn.Module, units, flow: Flow) -> None:
    """For the ``activation`` criterion: each unit's activation module runs once per forward pass as a module
    and trains with the model (the score is recorded by its forward hook in train mode). ConfigError otherwise:
    never running, its score would be missing at the first event (after epochs of training); running twice,
    it would average two uses."""
    if not flow.calls:
        return
    was_training = model.training
    model.train()
    try:
        for unit in units:
            name = unit.activation_module
            if not flow.calls[unit.module]:
                continue  # the layer runs only in training (or through its weights): not judged
            if flow.calls[name] != 1:
                how = "never runs as a module" if not flow.calls[name] else f"runs {flow.calls[name]} times"
                raise C.ConfigError(f"unit {unit.name!r}: its activation module {name!r} {how} in one forward pass; "
                                    f"pruning.criterion=activation needs a module that runs once (declare "
                                    f"PrunableUnit(..., activation=...)), or use another criterion")
            if not model.get_submodule(name).training:
                raise C.ConfigError(f"unit {unit.name!r}: its activation module {name!r} stays in eval mode when "
                                    f"the model trains (an overridden train()), so no activation is recorded; "
                                    f"allowed for pruning.criterion=activation: a module that trains")
    finally:
        model.train(was_training)


def _refuse_tied(unit, shared: dict[str, str]) -> None:
    if unit.module in shared:
        raise C.ConfigError(f"unit {unit.name!r}: the weight of {unit.module!r} is also {shared[unit.module]!r}'s "
                            f"(tied weights), and a mask on it would prune that layer too; allowed: a layer whose "
                            f"parameters are its own")


def _shared_parameters(model: torch.nn.Module) -> dict[str, str]:
    """Module name -> another module holding one of its parameters (one module under two names is one)."""
    owner: dict[int, str] = {}
    shared = {}
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is None:
                continue
            if id(p) in owner:
                shared[name], shared[owner[id(p)]] = owner[id(p)], name
            else:
                owner[id(p)] = name
    return shared


def _check_pairing(model: torch.nn.Module, unit, fed_by: dict[str, str], modules: dict) -> None:
    """The unit's BatchNorm is the one its layer's output goes into (alone, per ``Flow.fed_by``), and no other
    normalization follows that masking cannot."""
    width = modules[unit.module].weight.shape[0]
    fed = [n for n, layer in fed_by.items() if layer == unit.module]
    unmaskable = [n for n in fed if not _keeps_zero(modules[n])]
    if unmaskable:
        raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} goes into "
                            f"{_named(unmaskable, modules)}, which would give a pruned unit a non-zero output (a "
                            f"shift, or statistics over other units); allowed after a pruned layer: BatchNorm, "
                            f"InstanceNorm without affine or running statistics, or none")
    bns = [n for n in fed if isinstance(modules[n], BATCHNORM) and modules[n].num_features == width]
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


def _keeps_zero(norm: torch.nn.Module) -> bool:
    """A normalization after which a dead unit (all zeros) stays zero: a BatchNorm (its shift, or its running
    mean, is masked) or an InstanceNorm without affine parameters or running statistics."""
    return isinstance(norm, BATCHNORM) or _zero_anywhere(norm)


def _zero_anywhere(norm: torch.nn.Module) -> bool:
    """A normalization that keeps a zero channel at zero wherever it lies: no affine parameters, no running
    statistics (nothing to mask)."""
    return isinstance(norm, (BATCHNORM, torch.nn.modules.instancenorm._InstanceNorm)) and not (
        norm.affine or norm.track_running_stats)


def _named(names: list[str], modules: dict) -> str:
    return ", ".join(f"{type(modules[n]).__name__} {n!r}" for n in names)
