"""Stable text of a user's objects for run ids: the same object gives the same text in every process (no memory
addresses), and any setting that can change what it computes changes the text."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import re
import sys
from typing import Any

MAX_DEPTH = 8  # attributes of attributes: deeper values are named by type only (and cycles end)
_DESCRIBING: set[int] = set()  # ids of the modules whose attributes are being written (a cycle ends there)
_TREE: dict[int, str] = {}  # id -> name of the modules of the model being fingerprinted (``model_tree``)


@contextlib.contextmanager
def model_tree(model):
    """While open, a module of ``model``'s tree met in an attribute (``self.blocks = [self.fc1, self.fc2]``, a
    closure over ``self``) is written as its name in the tree, which is hashed on its own; any other module is
    written in full (tree, attributes, state)."""
    _TREE.update({id(m): name for name, m in model.named_modules(remove_duplicate=False)})
    try:
        yield
    finally:
        _TREE.clear()


def code_text(fn: Any, depth: int = 0) -> str:
    """A function's or class's identity and code: ``module.qualname``, then its source (the bytecode where Python
    keeps none), its defaults and the values its closure captured. torch's own code is named only (its source
    is torch's version, not the user's setting)."""
    module, name = getattr(fn, "__module__", None) or "", getattr(fn, "__qualname__", type(fn).__name__)
    text = f"{module}.{name}"
    if module == "torch" or module.startswith(("torch.", "builtins")) or inspect.isbuiltin(fn):
        return text
    try:
        text += inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text += _bytecode_text(code) if code is not None else "no source"
    if inspect.isfunction(fn):
        cells = [c.cell_contents for c in fn.__closure__ or () if _filled(c)]
        text += stable_repr((fn.__defaults__, fn.__kwdefaults__, cells), depth + 1)  # depth: a self-capture ends
    return text


def _bytecode_text(code) -> str:
    """A code object's instructions and constants, nested code objects (lambdas, comprehensions) by the same
    text: their repr holds a memory address."""
    consts = [_bytecode_text(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return f"{code.co_code!r}({', '.join(consts)})"


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def stable_repr(value: Any, depth: int = 0) -> str:
    """Text of ``value`` that is equal across processes for equal settings: plain values as Python writes them,
    containers element by element, tensors by a hash of their bytes, functions and classes by ``code_text``,
    other objects by their type and attributes (modules: only the attributes their class adds)."""
    if isinstance(value, (type(None), bool, int, float, complex, str, bytes)):
        return repr(value)
    if depth >= MAX_DEPTH:
        return f"<{type(value).__qualname__}>"
    inner = depth + 1
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{', '.join(stable_repr(v, inner) for v in value)}]"
    if isinstance(value, (set, frozenset)):
        return f"set[{', '.join(sorted(stable_repr(v, inner) for v in value))}]"
    if isinstance(value, dict):
        items = sorted(f"{stable_repr(k, inner)}: {stable_repr(v, inner)}" for k, v in value.items())
        return f"dict{{{', '.join(items)}}}"
    torch = sys.modules.get("torch")  # not imported: no value is a tensor (the registry stays light to import)
    if torch is not None and isinstance(value, torch.Tensor):
        return tensor_text(value)
    if torch is not None and isinstance(value, torch.Generator):  # its repr is an address: its state decides
        return f"generator({value.device}):{tensor_text(value.get_state())}"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):  # repr elides the middle of a large array
        return f"ndarray{value.shape}:{value.dtype}:{_digest(numpy.ascontiguousarray(value).tobytes())}"
    if isinstance(value, logging.Logger):  # its __dict__ holds a cache that logging calls fill
        return f"logging.Logger({value.name!r})"
    if isinstance(value, functools.partial):
        return f"partial({stable_repr((value.func, value.args, value.keywords), inner)})"
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value) or inspect.ismethod(value):
        return code_text(getattr(value, "__func__", value), inner)
    if torch is not None and isinstance(value, torch.nn.Module):  # held in a list, a dict or a closure
        if id(value) in _TREE:  # a module of the model's tree (hashed there): named by its place in it
            return f"<module {_TREE[id(value)]!r}>"
        if id(value) in _DESCRIBING:  # a module's own attribute reaching it again (a closure over self)
            return f"<module {type(value).__qualname__}, itself>"
        state = stable_repr(dict(value.state_dict(keep_vars=True)), inner)
        return f"<module {_without_addresses(repr(value))} {module_attributes(value, inner)} {state}>"
    if hasattr(value, "__dict__"):
        return f"{type(value).__module__}.{type(value).__qualname__}{stable_repr(vars(value), inner)}"
    return f"{type(value).__module__}.{type(value).__qualname__}:{_without_addresses(repr(value))}"


def module_attributes(module, depth: int = 0) -> str:
    """The plain attributes a module's class sets (``self.scale = 100.0``, ``self.act = torch.sigmoid``, a plain
    list of modules), which the module tree's repr does not show; torch's own bookkeeping left out."""
    from torch import nn  # noqa: PLC0415

    base = vars(nn.Module())  # what every module holds: parameters, hooks, training, ...
    _DESCRIBING.add(id(module))
    try:
        return stable_repr({k: v for k, v in vars(module).items() if k not in base}, depth)
    finally:
        _DESCRIBING.discard(id(module))


def tensor_bytes(t) -> bytes:
    """A tensor's values as raw bytes (on the CPU, row-major), what every fingerprint of a tensor hashes."""
    import torch  # noqa: PLC0415

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_text(t) -> str:
    return f"tensor{tuple(t.shape)}:{t.dtype}:{_digest(tensor_bytes(t))}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)
