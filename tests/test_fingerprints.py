"""The text a user's object enters a run id with (gstlab.fingerprints): equal for equal settings in any process
(no memory address, no state that logging or iteration changes), different wherever what it computes differs."""

import logging

import numpy as np
import torch
from torch import nn

from gstlab.fingerprints import code_text, model_tree, stable_repr
from test_api import _run_id


def _compiled(factor: float):
    """A function without source (made by exec), whose constants hold a nested code object (the lambda)."""
    namespace: dict = {}
    exec(f"def scaled(x):\n    return (lambda y: y * {factor})(x)\n", namespace)  # noqa: S102
    return namespace["scaled"]


def test_a_function_without_source_is_its_bytecode_without_addresses():
    text = code_text(_compiled(2.0))
    assert "0x" not in text and text == code_text(_compiled(2.0)) != code_text(_compiled(3.0))


def test_loggers_generators_and_large_arrays_are_written_by_what_matters():
    log = logging.getLogger("gstlab.test.fingerprints")
    before = stable_repr(log)
    log.isEnabledFor(logging.DEBUG)  # fills the logger's level cache, which its __dict__ holds
    assert stable_repr(log) == before == "logging.Logger('gstlab.test.fingerprints')"
    seeded = [stable_repr(torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert seeded[0] == seeded[1] != seeded[2] and "0x" not in seeded[0]
    big, other = np.zeros(5000), np.zeros(5000)
    other[2500] = 1.0  # repr shows "..." in place of the middle
    assert repr(big) == repr(other) and stable_repr(big) != stable_repr(other)


class Listed(nn.Module):
    """Modules held in a plain list: outside the module tree, so neither its repr nor its state shows them."""

    def __init__(self, extra: nn.Module | None = None, reverse: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 4)
        self.order = [self.b, self.a] if reverse else [self.a, self.b]
        self.extra = [extra or nn.Identity()]

    def forward(self, x):
        h = x.flatten(1)
        for layer in [*self.order, *self.extra]:
            h = torch.relu(layer(h))
        return self.head(h)


def test_modules_in_plain_lists_enter_the_id_in_full_or_by_their_place_in_the_tree():
    torch.manual_seed(0)
    one, two = nn.Linear(64, 64), nn.Linear(64, 64)
    ids = [_run_id(lambda m=m: Listed(m), units=["a"]) for m in (one, one, two)]
    assert ids[0] == ids[1] != ids[2]  # the unregistered Linear's weights decide
    assert _run_id(lambda: Listed(reverse=True), units=["a"]) != ids[0]  # the order the tree's layers run in
    model = Listed()
    with model_tree(model):
        assert stable_repr(model.order) == "list[<module 'a'>, <module 'b'>]"


class SelfCapturing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(64, 4), nn.Linear(4, 4)
        self.act = lambda x: torch.relu(x) * self.fc.out_features  # a closure over self

    def forward(self, x):
        return self.head(self.act(self.fc(x.flatten(1))))


def test_a_closure_over_the_model_names_it_by_its_place_in_the_tree():
    assert _run_id(SelfCapturing, units=["fc"]) == _run_id(SelfCapturing, units=["fc"])
    assert "<module ''>" in _model_text(SelfCapturing())


def _model_text(model: nn.Module) -> str:
    from gstlab.fingerprints import module_attributes

    with model_tree(model):
        return module_attributes(model)

