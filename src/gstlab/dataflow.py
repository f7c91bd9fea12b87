"""Where a model's pruned layers send their output, read from one forward pass, and the checks that masking can
follow it there (``check_units``): a pruned unit must stay dead (all zeros) up to the next layer that mixes
channels, as if it had been removed.

A unit's mask zeroes its weight row and bias and its BatchNorm's scale and shift. That holds a dead unit at zero
only when its output goes, channel for channel, into nothing but ops that keep zero at zero and that one BatchNorm.
The forward pass (eval mode, no gradient, a batch of two) labels every tensor with the Conv/Linear outputs it
derives from and, for each, where that layer's units lie in it: a *layout* (``gstlab.layouts``: the number of
elements before the unit dimension in row-major order, and the number of units), so a transpose, a permute, an
index or a flatten-and-back is followed, and a Linear's units on the last dimension of an (N, P, D) output are told
from a BatchNorm1d's channels on dimension 1. A layer reaches a normalization *exactly* when its units are that
normalization's channels (dimension 1; a LayerNorm's first normalized one); otherwise (a concatenation, a flatten,
a permutation, a channel flip, shuffle or advanced index) they are *moved*. An op that mixes channels (a
convolution, a matrix product, a LayerNorm's statistics) ends the lineage: what follows is another layer's output.
A learned shift added to a layer's output alone (a Parameter outside a normalization: Fixup's biases) and a
functional normalization that does not keep zero at zero (``F.group_norm``, ``F.layer_norm``, ``F.batch_norm`` with
a shift or running statistics) are recorded as ``shifted`` where they reach the next mixing op (the layer's own
affine BatchNorm on the way zeroes a pruned unit whatever came before), and so is a depthwise convolution after the
layer followed by a bias, a normalization or a shift: masking cannot zero them. A layer whose units, alone, are
the model's output (the classifier) or go into a softmax, a max, a sort, a mean or a product over them is
recorded as ``competing``: a pruned unit's 0 would still count there (a share of the softmax, a place in the
ranking, a term of the mean), where a removed unit would not.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from gstlab import config as C
from gstlab.errors import one_line
from gstlab.layouts import Layout, argument, as_dims, carry, dims_holding, index_map, plain, unit_dim, units_at
from gstlab.models import units_from_names
from gstlab.parts import PRUNABLE

BATCHNORM = torch.nn.modules.batchnorm._BatchNorm
# normalize their last dimensions (normalized_shape); RMSNorm since torch 2.4 (the floor is 2.1)
_LAST_DIMS_NORMS = (torch.nn.LayerNorm, *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()))
_NORMS = (BATCHNORM, torch.nn.GroupNorm, *_LAST_DIMS_NORMS, torch.nn.modules.instancenorm._InstanceNorm)
# ops whose output channels mix their input's: a layer's lineage ends there (its units no longer map 1:1)
_MIXING = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                     "convolution", "_convolution", "linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm",
                     "bmm", "mv", "addmm", "addmv", "addbmm", "baddbmm", "einsum", "tensordot", "group_norm",
                     "layer_norm", "rms_norm", "softmax", "log_softmax", "normalize", "multi_head_attention_forward",
                     "scaled_dot_product_attention", "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell",
                     "rnn_tanh_cell", "rnn_relu_cell"})  # (ops not listed here, that keep a layer's units where they
# were, are taken to act per element: docs/decisions.md, "Custom models")
# reductions over a dimension in which a pruned unit's 0 counts where a removed unit would not (it can be a max,
# a min, a rank; it is a term of a mean, a factor of a product): (position of the dim argument, its default; None
# for all dimensions). A sum or a norm is not here: a 0 adds nothing to them
_OVER_UNITS = {"max": (1, None), "min": (1, None), "amax": (1, None), "amin": (1, None), "argmax": (1, None),
               "argmin": (1, None), "logsumexp": (1, None), "median": (1, None), "nanmedian": (1, None),
               "mode": (1, -1), "topk": (2, -1), "kthvalue": (2, -1), "sort": (1, -1), "argsort": (1, -1),
               "msort": (None, 0), "cummax": (1, None), "cummin": (1, None), "cumprod": (1, None),
               "quantile": (2, None), "nanquantile": (2, None), "mean": (1, None), "nanmean": (1, None),
               "var": (1, None), "std": (1, None), "var_mean": (1, None), "std_mean": (1, None),
               "prod": (1, None), "all": (1, None)}
# functional normalizations; outside a normalization module they shift a dead unit (see _keeps_zero_functional)
_NORM_FUNCTIONS = frozenset({"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"})
_SHIFTS = frozenset({"add", "sub", "subtract", "__add__", "__radd__", "__sub__", "__rsub__", "__iadd__", "__isub__",
                     "rsub", "addcmul", "addcdiv", "lerp"})  # ops adding a tensor: with a learned one, a dead unit
# is shifted (in-place variants by their name without the trailing _)
_SHAPE_ONLY = frozenset({"expand_as", "view_as", "reshape_as", "type_as"})  # the second tensor gives only a shape
_CREATES = frozenset({"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
                      "randint_like", "new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"})


@dataclass
class Flow:
    """What one forward pass showed: for each normalization, the layers whose output reached its input, exactly
    (channel for channel) or moved, per call; how often each module ran (as a module); the layers whose output
    alone a learned shift or a functional normalization changed (``shifted``: layer -> what); the layers whose
    units are the logits or go into a softmax (``competing``); and where each module's output holds each layer's
    units (``unit_dims``)."""

    exact: dict[str, list[frozenset[str]]] = field(default_factory=lambda: collections.defaultdict(list))
    moved: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    sources: dict[str, frozenset[str]] = field(default_factory=dict)  # every layer reaching it (first call)
    calls: collections.Counter = field(default_factory=collections.Counter)
    shifted: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    # layer -> where its units, alone, compete: the model's output (class logits) or a softmax over them; a
    # pruned unit's 0 still takes a share there, which removing the unit would not give it
    competing: dict[str, str] = field(default_factory=dict)
    # module -> {layer: the dimension holding that layer's units in the module's output (first call), None where
    # they are moved or merged}: where an activation score sums (a BatchNorm1d after a PointNet's transpose, or a
    # ReLU after it, holds them on 1)
    unit_dims: dict[str, dict[str, int | None]] = field(default_factory=dict)
    # the modules that ran (eval or train mode) or whose parameters or buffers an op read (F.batch_norm with a
    # module's own); None when the train-mode pass failed, so that what runs only in training is not known
    used: set[str] | None = field(default_factory=set)

    @property
    def fed_by(self) -> dict[str, str]:
        """Each normalization fed, channel for channel, by one layer only (in its first call)."""
        return {norm: next(iter(calls[0])) for norm, calls in self.exact.items() if len(calls[0]) == 1}

    def feeds(self, layer: str) -> list[str]:
        """The normalizations ``layer``'s output reaches channel for channel, alone or summed with others."""
        return [norm for norm, calls in self.exact.items() if any(layer in c for c in calls)]


class _Lineage(TorchFunctionMode):
    """Labels each tensor with the layers it derives from and their layouts in it, with the shifts a layer's dead
    units took on the way (a learned bias, a functional normalization: absorbed by an affine BatchNorm, recorded
    in ``Flow.shifted`` where they reach a mixing op or the output), and each tensor computed from the model's
    parameters alone with their names. Every tensor it labels is held, so no later tensor can reuse its id."""

    def __init__(self, flow: Flow, parameters: dict[int, str], masked_affine: set[int]) -> None:
        super().__init__()
        self.flow, self.sources, self.params, self.masked_affine = flow, {}, dict(parameters), masked_affine
        self.shifts: dict[int, dict[str, frozenset[str]]] = {}
        self.pending: dict[int, dict[str, frozenset[str]]] = {}  # after a depthwise conv: a norm or shift next
        self.consumed: set[int] = set()  # tensors an op has read (the others' shifts are recorded at the end)
        self.held: list[torch.Tensor] = []
        self.in_norm = 0  # depth of normalization modules running (their own F.batch_norm is not a shift)

    def of(self, tensor: torch.Tensor) -> dict[str, Layout]:
        return self.sources.get(id(tensor), {})

    def shifts_of(self, tensor: torch.Tensor) -> dict[str, frozenset[str]]:
        return self.shifts.get(id(tensor), {})

    def pending_of(self, tensor: torch.Tensor) -> dict[str, frozenset[str]]:
        return self.pending.get(id(tensor), {})

    def mark(self, tensor: torch.Tensor, sources: dict[str, Layout], shifts: dict | None = None,
             pending: dict | None = None) -> None:
        self.sources[id(tensor)], self.shifts[id(tensor)] = sources, shifts or {}
        self.pending[id(tensor)] = pending or {}
        self.consumed.discard(id(tensor))  # an in-place op's result: read again from here
        self.held.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        if name == "__setitem__":
            self._write(*args[:3])
            return out
        outs = [t for t in pytree.tree_leaves(out) if torch.is_tensor(t) and t.dim() >= 1]
        ins = _read(name, args, kwargs)
        if name in _OVER_UNITS:  # before the scalar outputs leave: x.mean() reduces the units too
            self._over_units(name, args, kwargs)
        if not outs or name in _CREATES:
            return out
        self.consumed.update(id(t) for t in ins)
        depthwise = _per_channel(name, args, kwargs)
        if name in _MIXING:  # a new source (a Conv/Linear module's hook then names its own output)
            self._reach_mixing(name, args, kwargs, ins)
            pending = self._after_depthwise(name, args, kwargs, ins) if depthwise else {}
            for t in outs:
                self.mark(t, {f"<{name}, which mixes channels>": units_at(t.shape, _mixed_dim(name, t.dim()))}, {},
                          pending)
            return out
        new_shifts = self._new_shifts(name, args, kwargs, ins)
        for o in outs:
            self._label(o, name, args, kwargs, ins, new_shifts)
        if name == "batch_norm":
            self._absorb(args, kwargs, outs)
        written = args[0] if args and torch.is_tensor(args[0]) and (_in_place(name) or "out" in kwargs) else None
        if written is not None and written._base is not None:
            self._into_base(written, [t for t in ins if t is not written])
        return out

    def _label(self, o: torch.Tensor, name: str, args: Sequence, kwargs: dict, ins: list, new_shifts: dict) -> None:
        carried: dict[str, Layout] = {}
        shifts, pending = dict(new_shifts), {}
        for t in ins:
            for source, layout in self.of(t).items():
                new = carry(name, args, kwargs, t, o, layout)
                if carried.get(source, new) != new:  # two layouts: moved; added, other units' values reach it
                    new = None
                    if plain(name) in _SHIFTS:  # h - h.mean(1, keepdim=True)
                        shifts[source] = shifts.get(source, frozenset()) | {
                            f"{plain(name)} of a statistic over its units, which gives a pruned unit the others' "
                            "values"}
                carried[source] = new
            shifts, pending = _merged(shifts, self.shifts_of(t)), _merged(pending, self.pending_of(t))
        if carried:
            self.mark(o, carried, shifts, {s: w for s, w in pending.items() if s not in shifts})
        elif ins and all(id(t) in self.params for t in ins):
            self.params[id(o)] = self.params[id(ins[0])]
            self.held.append(o)

    def _write(self, target, index, value) -> None:
        """``target[index] = value``: the value's layers join the target's, in place where the index keeps the
        value's unit dimension whole."""
        if not (torch.is_tensor(target) and torch.is_tensor(value)) or not self.of(value):
            return
        self.consumed.add(id(value))
        where = index_map(index, tuple(target.shape))
        merged = dict(self.of(target))
        for source, layout in self.of(value).items():
            new = None
            d = unit_dim(tuple(value.shape), layout) if layout is not None and where is not None else None
            if d is not None:
                at = d + where[1] - value.dim()  # the value is broadcast to the indexed part's shape
                dims = [k for k, j in enumerate(where[0]) if j == at]
                if dims and target.shape[dims[0]] == value.shape[d]:
                    new = units_at(tuple(target.shape), dims[0])
            merged[source] = new if merged.get(source, new) == new else None
        self.mark(target, merged, _merged(self.shifts_of(target), self.shifts_of(value)),
                  _merged(self.pending_of(target), self.pending_of(value)))
        if target._base is not None:
            self._into_base(target, [value])

    def _into_base(self, view: torch.Tensor, written: list) -> None:
        """A write into a view (``buf[:, :8].copy_(h)``, ``h[:, :4].copy_(h[:, 4:])``) writes its base: the layers
        of what was written join it as moved (where in the base they landed is not followed); an in-place op on
        the view's own values (``h[:, :4].relu_()``) moves nothing."""
        base = view._base
        sources = {**self.of(base), **{s: None for t in written for s in self.of(t)}}
        self.mark(base, sources, _merged(self.shifts_of(base), self.shifts_of(view)),
                  _merged(self.pending_of(base), self.pending_of(view)))

    def _alone(self, ins: list) -> set[str]:
        """The layers whose channels no other layer's output shares in the op's inputs (a residual sum shares
        them: the channel lives on there)."""
        pairs = {(s, layout) for t in ins for s, layout in self.of(t).items()}
        return {s for s, layout in pairs if not any(
            other != s and (theirs == layout if layout is not None else theirs is not None)
            for other, theirs in pairs)}

    def _new_shifts(self, name: str, args: Sequence, kwargs: dict, ins: list) -> dict[str, frozenset[str]]:
        """The shifts op ``name`` gives the layers alone in its inputs (moved or not): a learned one (a Parameter,
        or a tensor computed from parameters alone, added) or a functional BatchNorm/InstanceNorm that does not
        keep zero at zero."""
        base = plain(name)
        if base in _NORM_FUNCTIONS:
            what = None if self.in_norm or _keeps_zero_functional(base, args, kwargs) else \
                f"F.{base}, whose shift or running mean masking does not zero"
        else:
            learned = [self.params[id(t)] for t in ins if id(t) in self.params] if base in _SHIFTS else []
            what = f"parameter {learned[0]!r}, a learned shift that masking does not zero" if learned else None
        if not what:
            return {}
        return _merged({s: frozenset({what}) for s in self._alone(ins)}, self._pending_met(ins, what))

    def _reach_mixing(self, name: str, args: Sequence, kwargs: dict, ins: list) -> None:
        """Record the shifts that reach a mixing op (the next layer sees them), and the mixing ops masking cannot
        follow a layer's output alone into: a functional GroupNorm/LayerNorm (statistics over other units) and a
        per-channel (depthwise) convolution, whose channels would need masking too."""
        for t in ins:
            self.record(self.shifts_of(t))
        if name in ("softmax", "log_softmax"):
            x, dim = argument(args, kwargs, 0, "input"), argument(args, kwargs, 1, "dim")
            if torch.is_tensor(x) and x.dim() and isinstance(dim, int):
                self.compete(x, {dim % x.dim()}, f"goes into a {name} over its units")
        if name in _NORM_FUNCTIONS:  # group_norm, layer_norm: statistics over the units
            what = f"F.{name}, whose statistics and shift masking does not zero"
            if not self.in_norm:
                self.record({s: frozenset({what}) for s in self._alone(ins)})
            self.record(self._pending_met(ins, what))

    def _over_units(self, name: str, args: Sequence, kwargs: dict) -> None:
        """A max, sort, mean or product over a layer's units: a pruned unit's 0 counts (the maximum of negative
        values, a term of the mean), where a removed unit would not."""
        x = argument(args, kwargs, 0, "input")
        at, default = _OVER_UNITS[name]
        dims = default if at is None else argument(args, kwargs, at, "dim", default=default)
        if isinstance(dims, bool):  # x.var(True): the old positional ``unbiased``, not a dimension
            dims = default
        if not torch.is_tensor(x) or x.dim() < 1 or isinstance(dims, torch.Tensor):  # max(a, b): element-wise
            return
        every = dims is None or dims == () or dims == []
        try:
            reduced = set(range(x.dim())) if every else set(as_dims(dims, x.dim()))
        except TypeError:
            return
        self.compete(x, reduced, f"goes into a {name} over its units")

    def compete(self, x: torch.Tensor, dims: set[int], where: str) -> None:
        """Record the layers alone in ``x`` with units on any of dimensions ``dims`` (``dims_holding``: split by
        a view or merged by a flatten too) as competing ``where`` (a layer summed with another's output on the same
        units lives on in the sum, as a residual's channel)."""
        alone = self._alone([x])
        for source, layout in self.of(x).items():
            if source in alone and dims & dims_holding(tuple(x.shape), layout):
                self.flow.competing.setdefault(source, where)

    def _after_depthwise(self, name: str, args: Sequence, kwargs: dict, ins: list) -> dict[str, frozenset[str]]:
        """A per-channel (depthwise) convolution keeps one layer's dead channel at zero only without a bias and
        with no normalization or shift after it before the next mixing op: its bias is recorded now, the rest is
        pending (``pending``: recorded where a normalization or shift meets it)."""
        x = _conv_input(args, kwargs)
        what = f"a per-channel {name} (groups={x.shape[1]})"
        if argument(args, kwargs, 2, "bias") is not None:
            self.record({s: frozenset({f"{what} with a bias, which masking does not zero"}) for s in self._alone([x])})
            return {}
        new = {s: frozenset({f"{what}, whose channels masking does not follow"}) for s in self._alone([x])}
        return _merged(new, self.pending_of(x))  # after another depthwise conv: still pending

    def _absorb(self, args: Sequence, kwargs: dict, outs: list) -> None:
        """A masked affine BatchNorm (a module's own F.batch_norm) fed by one layer alone zeroes its pruned units
        whatever shift came before: that layer's shifts end there."""
        x, weight = argument(args, kwargs, 0, "input"), argument(args, kwargs, 3, "weight")
        sources = self.of(x) if torch.is_tensor(x) else {}
        if id(weight) not in self.masked_affine or len(sources) != 1 or x.dim() < 2:
            return
        if next(iter(sources.values())) == units_at(x.shape, 1):
            for o in outs:
                self.shifts[id(o)] = {s: w for s, w in self.shifts_of(o).items() if s not in sources}

    def reach_normalization(self, x, norm: str, module: torch.nn.Module) -> None:
        """Pending depthwise conditions met by a normalization that gives a zero channel a value."""
        if not _zero_anywhere(module):
            self.record(self._pending_met([x], f"{type(module).__name__} {norm!r}"))

    def _pending_met(self, tensors: list, what: str) -> dict[str, frozenset[str]]:
        """The pending depthwise conditions of ``tensors`` made shifts by ``what`` (a normalization or shift)."""
        return {s: frozenset(f"{w}, then {what}" for w in ws) for t in tensors for s, ws in self.pending_of(t).items()}

    def record(self, shifts: dict[str, frozenset[str]]) -> None:
        for source, what in shifts.items():
            self.flow.shifted[source] |= what

    def finish(self) -> None:
        """Shifts on tensors no traced op read (the output, or an input of a TorchScript module) are recorded."""
        for tensor_id, shifts in self.shifts.items():
            if tensor_id not in self.consumed:
                self.record(shifts)


def _op_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property (x.T, x.mT): named by its descriptor
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _in_place(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__") or name in ("__iadd__", "__isub__", "__imul__",
                                                                      "__itruediv__")


def _per_channel(name: str, args: Sequence, kwargs: dict) -> bool:
    """A convolution with one group per input channel (depthwise): it does not mix channels."""
    x = _conv_input(args, kwargs) if name.startswith(("conv1d", "conv2d", "conv3d", "conv_transpose")) else None
    if x is None or x.dim() < 2:
        return False
    try:
        groups = operator.index(argument(args, kwargs, 6, "groups", default=1))
    except TypeError:
        return False
    return 1 < groups == x.shape[1]


def _mixed_dim(name: str, ndim: int) -> int:
    """Where a mixing op's output holds its units: dimension 1 for convolutions and channel norms, else last."""
    channels_first = name.startswith(("conv", "_conv")) or name in ("group_norm", "normalize")
    return min(1, ndim - 1) if channels_first else ndim - 1


def _conv_input(args: Sequence, kwargs: dict):
    x = argument(args, kwargs, 0, "input")
    return x if torch.is_tensor(x) else None


def _merged(a: dict[str, frozenset[str]], b: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    return {s: a.get(s, frozenset()) | b.get(s, frozenset()) for s in {*a, *b}}


def _keeps_zero_functional(name: str, args: Sequence, kwargs: dict) -> bool:
    """F.batch_norm / F.instance_norm without a shift or running statistics keep a zero channel at zero;
    F.group_norm and F.layer_norm subtract statistics over other units."""
    if name not in ("batch_norm", "instance_norm"):
        return False
    return argument(args, kwargs, 1, "running_mean") is None and argument(args, kwargs, 4, "bias") is None


@torch.no_grad()
def trace(model: torch.nn.Module, x: torch.Tensor, classes: int) -> Flow:
    """ConfigError unless ``model`` maps the inputs ``x`` (a batch of up to two) to ``classes`` logits each: a
    model that does not fit its data otherwise fails deep in torch. Eval mode, no gradient, then one train-mode
    pass (``_check_train_output``); the model's state and the random streams are then put back (``_kept``), so a
    run is as without the check. Returns the ``Flow`` of the eval pass. A model with parameters still
    uninitialized (lazy modules) is not run (an empty Flow): its first forward would draw its initial weights."""
    flow = Flow()
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        return flow
    _check_dtype(model)
    with _kept(model, x):
        return _trace(model, x, classes, flow)


def _trace(model: torch.nn.Module, x: torch.Tensor, classes: int, flow: Flow) -> Flow:
    """``trace``'s two passes, filling ``flow``."""
    masked_affine = {id(m.weight) for m in model.modules() if isinstance(m, BATCHNORM) and m.affine}
    lineage = _Lineage(flow, {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}, masked_affine)
    owners = {id(t): name for name, m in model.named_modules()
              for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))}
    reads = _Reads(owners)
    hookable = [(n, m) for n, m in model.named_modules() if not isinstance(m, torch.jit.ScriptModule)]  # no hooks
    hooks = [m.register_forward_hook(functools.partial(_record, flow, lineage, name), with_kwargs=True)
             for name, m in hookable]
    hooks += [m.register_forward_pre_hook(functools.partial(_enter_norm, lineage), with_kwargs=True)
              for _, m in hookable if isinstance(m, _NORMS)]
    model.eval()
    try:
        with lineage, reads:
            out = model(x)
        lineage.finish()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise C.ConfigError(f"model: its forward pass fails on an input of shape {tuple(x.shape[1:])} "
                            f"({one_line(err)}); the model must take the data's inputs") from None
    finally:
        for hook in hooks:
            hook.remove()
    if not torch.is_tensor(out) or tuple(out.shape) != (len(x), classes):
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise C.ConfigError(f"model: {len(x)} inputs give {got}; the data has {classes} classes, so allowed: "
                            f"(batch, {classes}) logits")
    lineage.compete(out, {1}, "is the model's output (its units are the class logits)")
    in_training = _check_train_output(model, x, classes, owners)
    flow.used = None if in_training is None else reads.used | set(flow.calls) | in_training
    return flow


def _read(name: str, args: Sequence, kwargs: dict) -> list[torch.Tensor]:
    """The tensors op ``name`` reads: not an ``out=`` it writes, nor a second tensor that gives only a shape."""
    values = args[:1] if name in _SHAPE_ONLY else (args, {k: v for k, v in kwargs.items() if k != "out"})
    return [t for t in pytree.tree_leaves(values) if torch.is_tensor(t)]


class _Reads(TorchFunctionMode):
    """Records the modules whose parameters or buffers an op reads (``owners``: a tensor's id -> its module), in
    both passes of ``trace`` (in the eval pass inside ``_Lineage``). A ``__setitem__`` is a write, not counted."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners, self.used = owners, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name != "__setitem__":
            self.used.update(self.owners[id(t)] for t in _read(name, args, kwargs) if id(t) in self.owners)
        return func(*args, **kwargs)


def _check_train_output(model: torch.nn.Module, x: torch.Tensor, classes: int,
                        owners: dict[int, str]) -> set[str] | None:
    """ConfigError unless ``model`` gives (batch, classes) logits in train mode too (an auxiliary head's tuple
    would otherwise fail deep in the loss, with the run directory made); ``trace`` restores what the pass changes.
    An error of the pass itself is left to training to report (the eval pass showed the model takes the inputs).
    Returns the modules that ran or whose parameters or buffers an op read (``owners``), None when the pass
    failed."""
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda *_, name=name: ran.add(name)) for name, m in model.named_modules()
             if not isinstance(m, torch.jit.ScriptModule)]
    reads = _Reads(owners)
    model.train()
    try:
        with reads:
            out = model(x)
    except Exception:  # noqa: BLE001
        return None
    finally:
        for hook in hooks:
            hook.remove()
    if not torch.is_tensor(out) or tuple(out.shape) != (len(x), classes):
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise C.ConfigError(f"model: in train mode {len(x)} inputs give {got} (in eval mode, logits); the loss "
                            f"needs (batch, {classes}) logits in both modes; allowed: a forward that returns the "
                            f"logits in train mode too (no auxiliary outputs)")
    return ran | reads.used


@contextlib.contextmanager
def _kept(model: torch.nn.Module, x: torch.Tensor):
    """The model's state dict, every buffer (those outside the state dict too: ``persistent=False``), its
    train/eval mode and the random streams as they were before, whatever the passes inside change (BatchNorm
    statistics, dropout draws, a counter a forward keeps)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {n: (b, b.clone()) for n, b in model.named_buffers(remove_duplicate=False)}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            yield
    finally:
        model.load_state_dict(state)
        _restore_buffers(model, buffers)
        model.train(was_training)


def _restore_buffers(model: torch.nn.Module, saved: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put back each buffer: the tensor its name held, with the values it had, whether the forward pass changed it
    in place or replaced it."""
    with torch.no_grad():
        for name, (tensor, values) in saved.items():
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, tensor.copy_(values))


def _check_dtype(model: torch.nn.Module) -> None:
    other = next(((n, p.dtype) for n, p in model.named_parameters() if p.is_floating_point()
                  and p.dtype != torch.float32), None)
    if other is not None:
        raise C.ConfigError(f"model: parameter {other[0]!r} is {other[1]}; allowed: float32 parameters (runs train "
                            f"in float32, or in bf16/fp16 under autocast with train.precision): model.float()")


def _enter_norm(lineage: _Lineage, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    lineage.in_norm += 1


def _record(flow: Flow, lineage: _Lineage, name: str, module: torch.nn.Module, args: tuple, kwargs: dict,
            out) -> None:
    """Forward hook of ``trace``: counts the call; a normalization records which layers reach its (first) input,
    exactly (their units on its dimension 1) or moved (a moved layer summed with another's whole output lives on
    in that sum, as a residual's channel does, and is not recorded); a layer's output starts a lineage, its units
    on dimension 1 (a Conv's channels, a Linear's features on a 2-d input) or last (a Linear on (N, P, D))."""
    flow.calls[name] += 1
    x = next((t for t in (*args, *kwargs.values()) if torch.is_tensor(t)), None)  # its input, also by keyword
    if isinstance(module, _NORMS):
        lineage.in_norm -= 1
        if x is not None and x.dim() >= 2:
            sources, channels = lineage.of(x), units_at(x.shape, _channel_dim(module, x.dim()))
            exact = frozenset(s for s, layout in sources.items() if layout == channels)
            flow.exact[name].append(exact)
            flow.moved[name] |= {s for s in sources if s not in exact and not exact - {s}}
            flow.sources.setdefault(name, frozenset(sources))
            lineage.reach_normalization(x, name, module)
    if isinstance(module, PRUNABLE) and torch.is_tensor(out) and out.dim() >= 1:
        spatial = len(module.kernel_size) if isinstance(module, torch.nn.modules.conv._ConvNd) else 0
        lineage.mark(out, {name: units_at(out.shape, out.dim() - 1 - spatial)}, lineage.shifts_of(out),
                     lineage.pending_of(out))
    if torch.is_tensor(out) and name not in flow.unit_dims:  # None: the layer's units moved or merged there
        flow.unit_dims[name] = {s: None if layout is None else unit_dim(tuple(out.shape), layout)
                                for s, layout in lineage.of(out).items()}


def _channel_dim(norm: torch.nn.Module, ndim: int) -> int:
    """The dimension a normalization takes for its channels: 1, or a LayerNorm's or RMSNorm's first normalized
    one (the features of a transformer's (N, T, D))."""
    return ndim - len(norm.normalized_shape) if isinstance(norm, _LAST_DIMS_NORMS) else 1


def check_units(model: torch.nn.Module, units, flow: Flow) -> None:
    """ConfigError when masking cannot make a unit act as removed (see the module's text): its layer or BatchNorm
    shares a parameter with another module, its output reaches a normalization that runs more than once, that it
    reaches with its channels moved, that masking cannot follow, or that is not the BatchNorm the unit is paired
    with, or its units are the logits or go into a softmax. A model not traced (an empty Flow: lazy parameters)
    and a layer the pass did not run are not judged."""
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
        if flow.shifted.get(unit.module):
            raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} goes through "
                                f"{'; and '.join(sorted(flow.shifted[unit.module]))}: a pruned unit would get a "
                                f"non-zero output; allowed: a shift inside the unit's BatchNorm, or none")
        if unit.module in flow.competing:
            raise C.ConfigError(f"unit {unit.name!r}: the output of {unit.module!r} {flow.competing[unit.module]}, "
                                f"where a pruned unit's 0 would still count (a share of a softmax, a "
                                f"place in a max or sort, a term of a mean; a removed one would not); allowed: a "
                                f"layer whose units a later layer reads")
        if unit.bn is not None and flow.used is not None and unit.bn not in flow.used:
            raise C.ConfigError(f"unit {unit.name!r}: BatchNorm {unit.bn!r}, paired with it, never runs (in eval or "
                                f"train mode) and no op reads its parameters, so it is not the unit's (its scores, "
                                f"e.g. E[BN], would be an untrained BatchNorm's); declare PrunableUnit("
                                f"{unit.name!r}, {unit.module!r}, bn=None)")
        _check_pairing(model, unit, fed_by, modules)
        _refuse_shared_batchnorm(unit, flow)


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
            held = flow.unit_dims.get(name, {})
            if held.get(unit.module) is None:  # None: moved or merged there; absent: not reached
                how = ("holds its units moved or merged (a flatten, permutation or concatenation)"
                       if unit.module in held else "does not receive its output")
                raise C.ConfigError(f"unit {unit.name!r}: its activation module {name!r} {how}, so no activation "
                                    f"per unit of {unit.module!r} can be read there; pruning.criterion=activation "
                                    f"needs a module whose output keeps the layer's units on one dimension (declare "
                                    f"PrunableUnit(..., activation=...)), or use another criterion")
            if not model.get_submodule(name).training:
                raise C.ConfigError(f"unit {unit.name!r}: its activation module {name!r} stays in eval mode when "
                                    f"the model trains (an overridden train()), so no activation is recorded; "
                                    f"allowed for pruning.criterion=activation: a module that trains")
    finally:
        model.train(was_training)


def _refuse_tied(unit, shared: dict[str, str]) -> None:
    """The unit's layer and BatchNorm own their parameters: a mask on a tied one prunes the other module too."""
    for what, name in (("layer", unit.module), ("BatchNorm", unit.bn)):
        if name in shared:
            raise C.ConfigError(f"unit {unit.name!r}: a parameter of {name!r} is also {shared[name]!r}'s (tied), "
                                f"and a mask on it would prune that module's channels too; allowed: a {what} whose "
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


def _refuse_shared_batchnorm(unit, flow: Flow) -> None:
    """The unit's BatchNorm must normalize its layer's output alone: masking it in a sum (a pre-activation
    block's BatchNorm after the skip, paired by declaration order) cuts the other branches' channel too."""
    others = sorted(flow.sources.get(unit.bn, frozenset()) - {unit.module}) if unit.bn is not None else []
    if others:
        also = "also " if unit.module in flow.sources[unit.bn] else ""
        raise C.ConfigError(f"unit {unit.name!r}: its BatchNorm {unit.bn!r} {also}normalizes the output of "
                            f"{', '.join(map(repr, others))} (a sum, such as a residual's skip), and masking it "
                            f"would cut their channel; declare PrunableUnit({unit.name!r}, {unit.module!r}, "
                            f"bn=None) (the channel lives on in the sum) or the BatchNorm the layer alone feeds")


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
