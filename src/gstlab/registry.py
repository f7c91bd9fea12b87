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
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from gstlab.errors import ConfigError

T = TypeVar("T")


class RegistryError(ValueError):
    """A name is registered twice."""


class Registry(Generic[T]):
    """Named objects for one config field (``field``, e.g. ``pruning.criterion``), in registration order."""

    def __init__(self, field: str, builtins: dict[str, str], group: str | None = None,
                 kind: Callable[[Any], str | None] | None = None) -> None:
        self.field, self.group = field, group  # group: the entry-point group of installed packages' entries
        self.kind = kind  # what an entry must be: None if ``obj`` is one, else what is wrong with it
        self._entries: dict[str, T | str] = dict(builtins)  # a str is a not yet imported "module:attribute"
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
        return obj

    def unregister(self, name: str) -> None:
        del self._entries[name]

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
            module, attribute = entry.split(":")
            entry = functools.reduce(getattr, attribute.split("."), importlib.import_module(module))
            self._entries[name] = entry
        return entry

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]


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
