"""Extension points: architectures, data sets and score criteria are registered objects, looked up by name.

The zoo, the data sets and the paper's criteria are registered here under the names a config uses
(``model.arch``, ``data.name``, ``pruning.criterion``). Built-ins are registered by ``module:attribute``, so
naming them (config validation, ``--help``) imports nothing; the object is loaded on first use. A user's own
entry is one registration::

    from gstlab.registry import criteria
    criteria.register("taylor", TaylorCriterion())   # now pruning.criterion: taylor is valid

Config validation, the pruner and the report of that Python process then know it like a built-in. An installed
package makes its entries known to every process, the ``gst`` command and sweep workers included, by entry points
in the groups ``gstlab.architectures``, ``gstlab.datasets`` and ``gstlab.criteria`` (name = the config value,
value = ``module:attribute``), read on the first lookup. What each registry holds:

- ``architectures``: ``build(cfg: ModelConfig, input_shape, num_classes) -> nn.Module`` (``gstlab.models``);
  a model that declares ``prunable_units()`` names its own prunable layers.
- ``datasets``: ``load(cfg: DataConfig) -> ((x_train, y_train, x_test, y_test), num_classes)`` with the inputs
  as :class:`gstlab.data.Images` or float tensors that are already model input (``gstlab.data``).
- ``criteria``: :class:`gstlab.pruning.criteria.Criterion` instances.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from gstlab.errors import ConfigError
from gstlab.fingerprints import code_text, stable_repr

T = TypeVar("T")


class RegistryError(ValueError):
    """A name is registered twice, or unregistered without being registered."""


class Registry(Generic[T]):
    """Named objects for one config field (``field``, e.g. ``pruning.criterion``), in registration order."""

    def __init__(self, field: str, builtins: dict[str, str], group: str | None = None,
                 kind: Callable[[Any], str | None] | None = None) -> None:
        self.field, self.group = field, group  # group: the entry-point group of installed packages' entries
        self.kind = kind  # what an entry must be: None if ``obj`` is one, else what is wrong with it
        self._entries: dict[str, T | str] = dict(builtins)  # a str is a not yet imported "module:attribute"
        self._shipped = set(builtins)  # names whose entry is gstlab's own (their code is gstlab's version)
        self._fingerprints: dict[str, str] = {}
        self._plugins_read = group is None

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in importlib.metadata.entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)  # a built-in or a registered entry keeps its name

    def register(self, name: str, obj: T, replace: bool = False) -> T:
        """Make ``obj`` the entry ``name``; RegistryError if the name is taken (unless ``replace``)."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.field}: a registered name is a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise RegistryError(f"{self.field}: {name!r} is already registered (pass replace=True to replace it)")
        problem = self.kind(obj) if self.kind else None
        if problem:
            raise RegistryError(f"{self.field}: {name!r} is {problem}")
        self._entries[name] = obj
        self._shipped.discard(name)
        self._fingerprints.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        if name not in self._entries:
            raise RegistryError(f"{self.field}: {name!r} is not registered; registered: {', '.join(self.names())}")
        del self._entries[name]
        self._shipped.discard(name)
        self._fingerprints.pop(name, None)

    def names(self) -> tuple[str, ...]:
        self._read_plugins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def allowed(self) -> str:
        """What the field accepts, as config error messages say it."""
        return "one of " + ", ".join(repr(n) for n in self.names())

    def get(self, name: str) -> T:
        """The entry ``name``; ConfigError naming the field and the registered names if there is none."""
        if name not in self:
            raise ConfigError(f"{self.field}: expected {self.allowed()}, got {name!r}")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._load(name, entry)
            self._entries[name] = entry
        return entry

    def _load(self, name: str, entry: str) -> T:
        """Import the ``module:attribute`` of ``name``; ConfigError naming the entry point when it cannot be
        imported or is not what the registry holds (an installed package's entry gets register()'s checks)."""
        where = f"{self.field}: {name!r} (entry point {entry!r} of group {self.group})"
        try:
            module, attribute = entry.split(":")
            obj = functools.reduce(getattr, attribute.split("."), importlib.import_module(module))
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"{where} cannot be loaded ({type(err).__name__}: {err}); fix or uninstall the package "
                              f"that declares it") from None
        problem = self.kind(obj) if self.kind and name not in self._shipped else None
        if problem:
            raise ConfigError(f"{where} is {problem}")
        return obj

    def shipped(self, name: str) -> bool:
        """Whether the entry ``name`` is gstlab's own."""
        return name in self._shipped

    def fingerprint(self, name: str) -> str | None:
        """None for gstlab's own entry ``name``; else ``module.qualname:hex``, a hash of the code of the entry
        (its source where Python has it, and an instance's attributes): it enters the run id, so a changed
        criterion, architecture or data loader is a new run, never a finished one found in a shared store."""
        if name in self._shipped:
            return None
        if name not in self._fingerprints:
            self._fingerprints[name] = code_fingerprint(self.get(name))
        return self._fingerprints[name]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]

    def loadable(self) -> list[tuple[str, T]]:
        """The entries that load (a broken installed package's entry is left out, for listing alternatives)."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.get(name)))
            except ConfigError:
                continue
        return out


def code_fingerprint(obj: Any) -> str:
    """``module.qualname:hex`` of a function, class or instance: its code (``fingerprints.code_text``: source,
    defaults, captured values) and an instance's attributes, written the same in every process."""
    code = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    h = hashlib.sha256(code_text(code).encode())
    if code is not obj:
        h.update(stable_repr(vars(obj) if hasattr(obj, "__dict__") else obj).encode())
    return f"{code.__module__}.{code.__qualname__}:{h.hexdigest()[:16]}"


def _builtins(module: str, names: dict[str, str]) -> dict[str, str]:
    return {name: f"{module}:{attribute}" for name, attribute in names.items()}


def _a_function(what: str) -> Callable[[Any], str | None]:
    def check(obj: Any) -> str | None:
        return None if callable(obj) else f"a {type(obj).__name__}, not callable; register {what}"
    return check


def _a_criterion(obj: Any) -> str | None:
    if isinstance(obj, type):
        return f"the class {obj.__name__}; register an instance, e.g. {obj.__name__}()"
    if not callable(getattr(obj, "scores", None)):
        return (f"a {type(obj).__name__} without a scores(layer) method; register an instance of "
                f"gstlab.pruning.criteria.Criterion")
    return None


datasets: Registry[Any] = Registry("data.name", _builtins("gstlab.data", {
    "fashion_mnist": "load_fashion_mnist", "cifar10": "load_cifar", "cifar100": "load_cifar",
    "mnist1d": "load_mnist1d", "synthetic": "load_synthetic"}), "gstlab.datasets",
    _a_function("a function (DataConfig) -> ((x_train, y_train, x_test, y_test), classes)"))
architectures: Registry[Any] = Registry("model.arch", _builtins("gstlab.models", {
    "vgg11_bn": "build_conv_net", "resnet18": "build_conv_net", "resnet20": "build_conv_net",
    "resnet56": "build_conv_net", "mlp": "build_mlp"}), "gstlab.architectures",
    _a_function("a function (ModelConfig, input_shape, classes) -> nn.Module"))
criteria: Registry[Any] = Registry("pruning.criterion", _builtins("gstlab.pruning.criteria", {
    "l1": "L1", "l2": "L2", "ebn": "EBN", "ebn_signed": "EBN_SIGNED", "activation": "ACTIVATION",
    "random": "RANDOM"}), "gstlab.criteria", _a_criterion)
