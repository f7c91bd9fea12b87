"""Stable text of a user's objects for run ids: the same object gives the same text in every process (no memory
addresses), and any setting that can change what it computes changes the text."""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import sys
from typing import Any

MAX_DEPTH = 8  # attributes of attributes: deeper values are named by type only (and cycles end)


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
        text += repr((code.co_code, code.co_consts)) if code is not None else "no source"
    if inspect.isfunction(fn):
        cells = [c.cell_contents for c in fn.__closure__ or () if _filled(c)]
        text += stable_repr((fn.__defaults__, fn.__kwdefaults__, cells), depth + 1)  # depth: a self-capture ends
    return text


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
    if isinstance(value, functools.partial):
        return f"partial({stable_repr((value.func, value.args, value.keywords), inner)})"
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value) or inspect.ismethod(value):
        return code_text(getattr(value, "__func__", value), inner)
    if torch is not None and isinstance(value, torch.nn.Module):
        return f"<module {type(value).__qualname__}>"  # a module attribute is part of the tree, hashed there
    if hasattr(value, "__dict__"):
        return f"{type(value).__module__}.{type(value).__qualname__}{stable_repr(vars(value), inner)}"
    return f"{type(value).__module__}.{type(value).__qualname__}:{_without_addresses(repr(value))}"


def module_attributes(module) -> str:
    """The plain attributes a module's class sets (``self.scale = 100.0``, ``self.act = torch.sigmoid``), which the
    module tree's repr does not show; torch's own bookkeeping left out."""
    from torch import nn  # noqa: PLC0415

    base = vars(nn.Module())  # what every module holds: parameters, hooks, training, ...
    return stable_repr({k: v for k, v in vars(module).items() if k not in base})


def tensor_text(t) -> str:
    import torch  # noqa: PLC0415

    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return f"tensor{tuple(t.shape)}:{t.dtype}:{digest}"


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)
