"""Where a tensor op puts the units of a layer: a *layout* is (the number of elements before the unit dimension in
row-major order, the number of units), so it survives a flatten and comes back with the shape, and the unit
dimension of a tensor is the one whose prefix and size match it. ``carry`` maps a layout through one op, judged on
the op (its name and the dimensions it is given) before the shapes: a permute that keeps the shape still moves the
units. None means the units were moved or merged (not followed further). Used by ``gstlab.dataflow``."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_RESHAPES = frozenset({"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "ravel", "squeeze",
                       "unsqueeze"})  # keep the row-major order of the elements, so a layout survives them
_SWAPS = frozenset({"transpose", "swapaxes", "swapdims"})
# ops that keep a tensor's shape but may rearrange along one dimension, named as their second argument (or
# keyword ``dim``; None: required)
_ALONG_DIM = {"cumsum": None, "cumprod": None, "cummax": None, "cummin": None, "logcumsumexp": None, "sort": -1,
              "argsort": -1, "index_select": None, "gather": None, "scatter": None, "scatter_add": None,
              "scatter_reduce": None, "index_add": None, "index_copy": None, "index_fill": None, "narrow": None}
_SCRAMBLES = frozenset({"index_put", "masked_scatter", "put", "take", "channel_shuffle", "native_channel_shuffle",
                        "pixel_shuffle", "pixel_unshuffle", "unfold"})  # where elements land is not followed
_REDUCTIONS = frozenset({"sum", "mean", "amax", "amin", "max", "min", "prod", "std", "var", "norm", "logsumexp",
                         "median", "nanmedian", "nansum", "nanmean", "any", "all", "argmax", "argmin",
                         "count_nonzero", "std_mean", "var_mean", "mode"})

Layout = tuple[int, int] | None  # (elements before the unit dimension, units) in row-major order; None: moved
_OTHER = object()  # an op not known to move dimensions: the shapes decide (``_aligned``)


def plain(name: str) -> str:
    """An op's name without the trailing _ of its in-place variant."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def argument(args: Sequence, kwargs: dict, i: int, *keys: str, default=None):
    """An op's argument given by keyword (any of ``keys``) or at position ``i``."""
    return next((kwargs[k] for k in keys if k in kwargs), args[i] if len(args) > i else default)


def units_at(shape: Sequence[int], dim: int) -> tuple[int, int]:
    """The layout of units on dimension ``dim`` of a tensor of ``shape``."""
    return math.prod(shape[:dim]), int(shape[dim])


def as_dims(v, ndim: int) -> list[int]:
    """A dimension argument (an integer, or a list or tuple of them) as dimensions of an ``ndim``-d tensor;
    TypeError where one is not an integer (numpy and torch integers are)."""
    return [operator.index(x) % ndim for x in (list(v) if isinstance(v, (list, tuple)) else [v])]


def unit_dim(shape: tuple[int, ...], layout: tuple[int, int]) -> int | None:
    """The dimension of ``shape`` holding the units of ``layout``; None when they are merged with another."""
    return next((d for d in range(len(shape)) if units_at(shape, d) == layout), None)


def dims_holding(shape: tuple[int, ...], layout: Layout) -> frozenset[int]:
    """The dimensions of ``shape`` (of size above 1) along which the unit of ``layout`` changes: its own; several
    where a view split the units (a maxout's (N, groups, pieces)); one shared with others where a flatten merged
    them (N, C·H·W). A dimension is apart from the units when its row-major digits lie wholly below theirs or
    wholly above, aligned; one that cuts across their digits unaligned counts as holding them (conservative)."""
    if layout is None or layout[1] < 2:
        return frozenset()
    block, numel = math.prod(layout), math.prod(shape)
    if not block or numel % block:
        return frozenset()
    start = numel // block  # the stride of the unit dimension where the layout was made
    end = start * layout[1]

    def apart(stride: int, size: int) -> bool:
        return (stride * size <= start and start % (stride * size) == 0) or (stride >= end and stride % end == 0)

    return frozenset(d for d in range(len(shape)) if shape[d] > 1 and not apart(math.prod(shape[d + 1:]), shape[d]))


def carry(name: str, args: Sequence, kwargs: dict, t: torch.Tensor, o: torch.Tensor, layout: Layout) -> Layout:
    """The layout, in op ``name``'s output ``o``, of the units that have ``layout`` in its input ``t``."""
    if layout is None:
        return None
    name = plain(name)
    if name in _RESHAPES and o.numel() == t.numel():
        return layout  # row-major order kept: units merged by a flatten come back with the shape
    d = unit_dim(tuple(t.shape), layout)
    if d is None:
        return None
    try:
        new = _moved_dim(name, _Call(args, kwargs, t.dim()), d, tuple(t.shape))
    except _Unfollowed:
        return None
    if new is _OTHER:
        new = _aligned(tuple(t.shape), tuple(o.shape), d)
    if new is None or not 0 <= new < o.dim() or o.shape[new] != t.shape[d]:
        return None
    return units_at(tuple(o.shape), new)


def _aligned(before: tuple[int, ...], after: tuple[int, ...], d: int) -> int | None:
    """Where dimension ``d`` is after an op that does not name its dimensions: in place if it kept its size and
    every dimension before it kept its size or was 1 (ReLU, pooling, crops, sums, a (1, C, 1, 1) statistic
    broadcast), shifted right when broadcasting added leading dimensions."""
    def kept(at: int) -> bool:  # the input's dimensions 0..d sit at the output's at..at + d
        return at + d < len(after) and after[at + d] == before[d] and all(
            before[i] in (1, after[at + i]) for i in range(d))

    if kept(0):
        return d
    k = len(after) - len(before)
    return d + k if k > 0 and kept(k) else None


class _Unfollowed(Exception):
    """A dimension given as something other than an integer: where the units go is not followed."""


@dataclass
class _Call:
    """An op's arguments, read as dimensions of its ``ndim``-d input."""

    args: Sequence
    kwargs: dict
    ndim: int

    def arg(self, i: int, *keys: str, default=None):
        return argument(self.args, self.kwargs, i, *keys, default=default)

    def dim(self, v) -> int:
        try:
            return operator.index(v) % self.ndim  # numpy and torch integers too
        except TypeError:
            raise _Unfollowed from None

    def dims(self, v) -> list[int]:
        try:
            return as_dims(v, self.ndim)
        except TypeError:
            raise _Unfollowed from None


def _moved_dim(name: str, call: _Call, d: int, shape: tuple[int, ...]):
    """Where op ``name`` puts dimension ``d`` of its input: a dimension, None (rearranged along it or not
    followed) or _OTHER (the op names no dimension: ``_aligned`` decides)."""
    ndim, arg = call.ndim, call.arg
    if name in _SCRAMBLES:
        return None
    if name in ("t", "H") and ndim < 2:
        return d
    if name in ("select", "unbind"):  # remove their dimension
        dim = call.dim(arg(1, "dim", default=0))
        return None if dim == d else d - (dim < d)
    if name in ("cat", "concat", "concatenate", "chunk", "split", "tensor_split", "split_with_sizes"):
        dim = call.dim(arg(1 if name in ("cat", "concat", "concatenate") else 2, "dim", "axis", default=0))
        return None if dim == d else d  # along another dimension (the batch: ghost batches) units stay
    if name == "stack":  # inserts a dimension
        dim = operator.index(arg(1, "dim", default=0)) % (ndim + 1)
        return d + (dim <= d)
    if name in ("t", "H", "mT", "mH", "adjoint") or name in _SWAPS:
        a, b = (call.dim(arg(1, "dim0", "axis0")), call.dim(arg(2, "dim1", "axis1"))) if name in _SWAPS else \
            (0, 1) if name in ("t", "H") else (ndim - 2, ndim - 1)
        return b if d == a else a if d == b else d
    if name == "T":
        return ndim - 1 - d
    if name == "permute":
        order = call.dims(call.args[1] if len(call.args) == 2 else list(call.args[1:]) or call.kwargs.get("dims", []))
        return order.index(d) if d in order else None
    if name in ("movedim", "moveaxis"):
        return _after_movedim(ndim, d, call.dims(arg(1, "source")), call.dims(arg(2, "destination")))
    if name in ("flip", "fliplr", "flipud", "roll", "rot90"):
        given = {"fliplr": 1, "flipud": 0}.get(name, arg(2, "dims") if name in ("roll", "rot90") else
                                                    [v for a in call.args[1:] for v in call.dims(a)]
                                                    or call.kwargs.get("dims"))
        dims = (0, 1) if name == "rot90" and given is None else given
        return None if dims is None or d in call.dims(dims) else d
    if name == "take_along_dim" or name in _ALONG_DIM:
        dim = arg(2 if name == "take_along_dim" else 1, "dim", default=_ALONG_DIM.get(name))
        return None if dim is None or call.dim(dim) == d else _OTHER
    if name in _REDUCTIONS and not (len(call.args) > 1 and torch.is_tensor(call.args[1])):
        at = 2 if name == "norm" else 1  # torch.norm(input, p, dim, keepdim)
        dims = arg(at, "dim", "axis")
        if dims is None or d in (reduced := call.dims(dims)):
            return None
        return d if arg(at + 1, "keepdim", default=False) is True else d - sum(k < d for k in reduced)
    if name == "__getitem__":
        where = index_map(call.args[1] if len(call.args) > 1 else None, shape)
        return None if where is None else where[0][d]
    return _OTHER


def _after_movedim(ndim: int, d: int, source: list[int], destination: list[int]) -> int | None:
    if len(source) != len(destination):
        return None
    order: list[int | None] = [None] * ndim
    for s, t in zip(source, destination):
        order[t] = s
    rest = iter(k for k in range(ndim) if k not in source)
    order = [next(rest) if k is None else k for k in order]
    return order.index(d)


def index_map(index, shape: tuple[int, ...]) -> tuple[list[int | None], int] | None:
    """For basic indexing (ints, slices, None, one Ellipsis) of a tensor of ``shape``: for each input dimension
    the output dimension holding it whole (None: indexed away or cut), and the output's dimensions; None for
    advanced indexing (tensors, lists, booleans), whose arrangement is not followed."""
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, bool) or not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items):
        return None
    if sum(i is Ellipsis for i in items) > 1:
        return None
    consumed = sum(isinstance(i, (int, slice)) for i in items)
    expanded: list = []
    for i in items:
        expanded += [slice(None)] * (len(shape) - consumed) if i is Ellipsis else [i]
    if not any(i is Ellipsis for i in items):
        expanded += [slice(None)] * (len(shape) - consumed)
    where: list[int | None] = []
    out = 0
    for i in expanded:
        if i is None:
            out += 1
            continue
        if isinstance(i, slice):
            size = shape[len(where)]
            where.append(out if i.indices(size) == (0, size, 1) else None)
            out += 1
        else:
            where.append(None)
    return where, out
