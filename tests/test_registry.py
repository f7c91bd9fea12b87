"""Extension points: a criterion, an architecture and a data set added in this file (one class or function and
one registration each) are accepted by config validation, used by the pruner and described by the report;
epoch callbacks see a RunView."""

import csv
import importlib.metadata
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gstlab import config as C
from gstlab.analysis.report import _criteria_lines
from gstlab.callbacks import EndRun, RunView, first_change
from gstlab.data import Images
from gstlab.models.units import PrunableUnit
from gstlab.pruning.criteria import Criterion, Layer
from gstlab.registry import Registry, RegistryError, architectures, criteria, datasets
from gstlab.runner import execute, prepare, run_epoch


class ReverseIndex(Criterion):
    """The test criterion: unit c scores -c, so Prune_S removes the units with the highest indices."""

    description = "minus the unit's index (a test criterion)"

    def scores(self, layer: Layer) -> torch.Tensor:
        return -torch.arange(layer.n_units, dtype=torch.float32)


class TwoLayerNet(nn.Module):
    def __init__(self, n_in: int, classes: int) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(n_in, 16), nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))

    def prunable_units(self) -> list[PrunableUnit]:
        return [PrunableUnit(name="hidden", module="hidden")]


def build_two_layer(cfg: C.ModelConfig, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    return TwoLayerNet(int(torch.tensor(input_shape).prod()), classes)


def load_blobs(cfg: C.DataConfig):
    """Two Gaussian blobs in 6 dimensions, float tensors (already model input)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 2
    x = torch.randn(96, 6, generator=g) + 2.0 * y[:, None]
    return (x[:64], y[:64], x[64:], y[64:]), 2


def pixels(mean: tuple, std: tuple):
    """uint8 images of 2 channels, decoded with ``mean`` and ``std``: any non-finite model input comes from those."""
    x = Images(torch.randint(0, 256, (64, 2, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
               mean=mean, std=std)
    y = torch.arange(64) % 2
    return (x, y, x, y), 2


@pytest.fixture
def registered():
    criteria.register("reverse_index", ReverseIndex())
    architectures.register("two_layer", build_two_layer)
    datasets.register("blobs", load_blobs)
    yield
    for registry, name in ((criteria, "reverse_index"), (architectures, "two_layer"), (datasets, "blobs")):
        registry.unregister(name)


CFG = {
    "data": {"name": "blobs"}, "model": {"arch": "two_layer"},
    "train": {"epochs": 3, "batch_size": 16, "progress": False},
    "pruning": {"criterion": "reverse_index", "side": "smallest", "period": 1,
                "layers": [{"name": "hidden", "fraction": 0.5, "start": 0, "end": 1}]},
}


def test_config_validation_knows_the_registered_names(registered):
    cfg = C.parse(CFG)
    assert (cfg.pruning.criterion, cfg.model.arch, cfg.data.name) == ("reverse_index", "two_layer", "blobs")
    with pytest.raises(C.ConfigError) as err:
        C.parse({"pruning": {"criterion": "l3"}})
    assert str(err.value) == ("pruning.criterion: expected one of 'l1', 'l2', 'ebn', 'ebn_signed', 'activation', "
                              "'random', 'reverse_index', got 'l3'")
    with pytest.raises(C.ConfigError, match=r"^model.arch: expected one of 'vgg11_bn', .*'two_layer', got 7$"):
        C.parse({"model": {"arch": 7}})


def test_unregistered_names_are_refused_with_the_builtin_list():
    with pytest.raises(C.ConfigError) as err:
        C.parse({"data": {"name": "blobs"}})
    assert str(err.value) == ("data.name: expected one of 'fashion_mnist', 'cifar10', 'cifar100', 'mnist1d', "
                              "'synthetic', got 'blobs'")


def test_a_run_prunes_with_the_registered_criterion_architecture_and_data(registered, tmp_path):
    summary = execute(C.parse(CFG), tmp_path / "run")
    assert summary["status"] == "finished"
    with open(tmp_path / "run" / "events.csv") as f:
        events = list(csv.DictReader(f))
    assert [(e["epoch"], e["criterion"], e["units_removed"]) for e in events] == [
        ("0", "reverse_index", "4"), ("1", "reverse_index", "4")]
    for e in events:  # each removed unit's score, as the criterion gave it (unit c scores -c)
        units, scores = [int(u) for u in e["units"].split()], [float(v) for v in e["scores"].split()]
        assert scores == [-float(u) for u in units] and float(e["mean_score"]) == sum(scores) / len(scores)
    state = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["model"]
    assert state["hidden.unit_mask"].tolist() == [1.0] * 8 + [0.0] * 8  # the highest indices, as scored


class CentredNet(TwoLayerNet):
    """Centres its input by a running mean kept in a buffer outside the state dict."""

    def __init__(self, inputs: int, classes: int) -> None:
        super().__init__(inputs, classes)
        self.register_buffer("centre", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.centre.mul_(0.5).add_(0.5 * x.mean() + 0.1)
        return super().forward(x - self.centre)


def test_gst_flatness_measures_a_model_with_its_buffers_outside_the_state_dict(registered, tmp_path, monkeypatch):
    """The probes of `gst flatness` see the buffer's trained value (until 2026-12-07: its initial 0)."""
    from gstlab import remeasure

    architectures.register("centred", lambda cfg, shape, classes: CentredNet(int(torch.tensor(shape).prod()),
                                                                             classes))
    try:
        execute(C.parse({**CFG, "model": {"arch": "centred"}}), tmp_path / "run")
        seen = []

        def measure(model, *args, **kwargs):
            seen.append(float(model.centre))
            raise KeyboardInterrupt  # the value is all this test needs

        monkeypatch.setattr(remeasure, "measure", measure)
        with pytest.raises(KeyboardInterrupt):
            remeasure.measure_checkpoint(tmp_path / "run", None, {}, progress=False)
    finally:
        architectures.unregister("centred")
    saved = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["buffers"]["centre"]
    assert seen == [float(saved)] and saved != 0


def test_a_builder_that_hands_out_one_instance_is_trained_as_a_copy(registered, tmp_path):
    """A registered builder may return a persistent (e.g. pretrained) model: training it in place would start
    the next run from this one's pruned weights."""
    torch.manual_seed(0)
    pretrained = TwoLayerNet(6, 2)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    architectures.register("pretrained", lambda cfg, shape, classes: pretrained)
    try:
        cfg = C.parse({**CFG, "model": {"arch": "pretrained"}})
        first, second = execute(cfg, tmp_path / "a"), execute(cfg, tmp_path / "b")
    finally:
        architectures.unregister("pretrained")
    assert pretrained.state_dict().keys() == before.keys()  # no mask buffers were added to it
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items())
    assert first == second


def test_the_report_describes_criteria_from_the_registry(registered):
    runs = pd.DataFrame({"criterion": ["reverse_index", "l2", "", "reverse_index"]})
    assert _criteria_lines(runs) == [
        "- score criteria: `reverse_index` (minus the unit's index (a test criterion)); "
        "`l2` (L2 norm of the unit's weights)"]
    assert _criteria_lines(pd.DataFrame({"criterion": [""]})) == []


def test_registry_refuses_a_name_twice_and_loads_builtins_lazily():
    reg = Registry("x.kind", {"sum": "builtins:sum"})
    assert reg.names() == ("sum",) and reg.get("sum") is sum
    with pytest.raises(RegistryError, match="'sum' is already registered"):
        reg.register("sum", max)
    reg.register("sum", max, replace=True)
    assert reg.get("sum") is max
    with pytest.raises(C.ConfigError, match=r"^x.kind: expected one of 'sum', got 'mean'$"):
        reg.get("mean")


def test_installed_packages_register_through_entry_points(monkeypatch):
    plugin = importlib.metadata.EntryPoint(name="biggest", value="builtins:max", group="gstlab.test")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [plugin] if group == "gstlab.test" else [])
    reg = Registry("x.kind", {"sum": "builtins:sum"}, group="gstlab.test")
    assert reg.names() == ("sum", "biggest") and reg.get("biggest") is max


def test_a_broken_entry_point_is_one_line_naming_it(monkeypatch):
    plugins = [importlib.metadata.EntryPoint(name=n, value=v, group="gstlab.test") for n, v in
               (("missing", "nosuchmod:X"), ("nocolon", "builtins"), ("number", "math:pi"))]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: plugins if group == "gstlab.test" else [])
    reg = Registry("x.kind", {}, group="gstlab.test", kind=lambda obj: None if callable(obj) else "not callable")
    for name, text in (("missing", "ModuleNotFoundError"), ("nocolon", "ValueError"), ("number", "is not callable")):
        with pytest.raises(C.ConfigError, match=rf"^x.kind: '{name}' \(entry point .* of group gstlab.test\) .*{text}"):
            reg.get(name)
    with pytest.raises(RegistryError, match="'nope' is not registered; registered: missing, nocolon, number"):
        reg.unregister("nope")


def test_the_run_id_follows_the_code_of_registered_entries(registered):
    """A shared store must not hand back a finished run made with other code under the same name."""
    cfg = C.parse(CFG)
    first = C.run_id(cfg)
    assert C.run_id(cfg) == first and C.registered_code(cfg)["pruning.criterion"].startswith(
        "test_registry.ReverseIndex:")

    class Other(Criterion):
        def scores(self, layer: Layer) -> torch.Tensor:
            return torch.arange(layer.n_units, dtype=torch.float32)

    criteria.register("reverse_index", Other(), replace=True)
    assert C.run_id(cfg) != first
    criteria.register("reverse_index", ReverseIndex(), replace=True)
    assert C.run_id(cfg) == first  # the same code again: the same run
    datasets.register("blobs", lambda c: load_blobs(c), replace=True)
    assert C.run_id(cfg) != first
    builtin = C.parse({**CFG, "data": {"name": "synthetic"}, "model": {"arch": "mlp"}, "pruning": {}})
    assert C.registered_code(builtin) == {"pruning.criterion": None, "model.arch": None, "data.name": None}


def test_a_criterion_that_needs_batchnorm_names_the_criteria_allowed_instead(registered, tmp_path):
    with pytest.raises(ValueError, match="pruning.criterion=ebn needs a BatchNorm with gamma and beta \\(affine\\) "
                                         "after layer 'hidden'; allowed criteria for it: l1, l2, activation, "
                                         "random, reverse_index"):
        prepare(C.parse(CFG, ["pruning.criterion=ebn"]), tmp_path / "run")


class Recorder:
    """An epoch callback that records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def after_epoch(self, run, epoch, events) -> None:
        self.seen.append((type(run), epoch, [e.units_removed for e in events], len(run.rows["metrics"])))

    def write(self, run) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_epoch_callbacks_see_a_run_view(registered, tmp_path):
    run = prepare(C.parse(CFG), tmp_path / "run")
    recorder = Recorder()
    run.callbacks.append(recorder)
    for epoch in range(2):
        run_epoch(run, epoch)
    assert recorder.seen == [(RunView, 0, [4], 0), (RunView, 1, [4], 1)]  # before the epoch's metrics row
    with pytest.raises(AttributeError):
        run.view().trainer  # noqa: B018 (a callback cannot reach the trainer)


def test_the_registries_refuse_what_cannot_serve_as_their_entries():
    with pytest.raises(RegistryError, match=r"'x' is the class ReverseIndex; register an instance, e\.g\. Rev"):
        criteria.register("x", ReverseIndex)
    with pytest.raises(RegistryError, match="without a scores\\(layer\\) method"):
        criteria.register("x", lambda layer: torch.zeros(3))
    with pytest.raises(RegistryError, match="model.arch: 'x' is a int, not callable"):
        architectures.register("x", 3)
    assert "x" not in criteria and "x" not in architectures


class Scores(Criterion):
    def __init__(self, make) -> None:
        self.make = make

    def scores(self, layer: Layer):
        return self.make(layer.n_units)


@pytest.mark.parametrize("make, message", [
    (lambda n: torch.full((n,), float("nan")), "with 16 non-finite scores (NaN or inf); allowed: finite"),
    (lambda n: torch.arange(n + 8.0), "with shape (24,); allowed: a 1-d tensor of its 16 units' scores"),
    (lambda n: torch.zeros(n, 2), "with shape (16, 2)"),
    (lambda n: list(range(n)), "with a list; allowed: a 1-d tensor"),
], ids=["nan", "too-long", "2-d", "list"])
def test_scores_that_would_prune_the_wrong_units_are_refused(registered, tmp_path, make, message):
    """NaN scores selected no unit while events.csv recorded removals; scores along another axis pruned by it."""
    criteria.register("bad_scores", Scores(make))
    try:
        with pytest.raises(C.ConfigError, match="pruning.criterion: 'bad_scores' scored layer 'hidden'") as err:
            execute(C.parse(CFG, ["pruning.criterion=bad_scores"]), tmp_path / "run")
        assert message in str(err.value)
    finally:
        criteria.unregister("bad_scores")


@pytest.mark.parametrize("source, message", [
    (lambda cfg: load_blobs(cfg)[0], "data.name: 'odd' returned tuple; allowed: ((x_train, y_train, x_test"),
    (lambda cfg: ((lambda x, y, xt, yt: (x, y.float(), xt, yt))(*load_blobs(cfg)[0]), 2),
     "gave train labels torch.float32 of shape (64,) for 64 inputs and 2 classes; allowed: a 1-d integer"),
    (lambda cfg: (load_blobs(cfg)[0], 1), "gave train labels torch.int64 of shape (64,) for 64 inputs and 1 classes"),
    (lambda cfg: ((lambda x, y, xt, yt: (x, y, xt.index_fill(0, torch.tensor([3]), float("nan")), yt))(
        *load_blobs(cfg)[0]), 2), "'odd' gave test inputs with 6 non-finite value(s) (NaN or inf); allowed: finite"),
    (lambda cfg: pixels((0.5, 0.5), (0.25, 0.0)), "'odd' gave train inputs with mean (0.5, 0.5) and std (0.25, 0.0); "
     "allowed: both empty, or both of 1 or 2 (channels) finite numbers, std > 0"),
    (lambda cfg: pixels((float("nan"),), (0.5,)), "gave train inputs with mean (nan,) and std (0.5,); allowed"),
    (lambda cfg: pixels((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)), "mean (0.5, 0.5, 0.5) and std (1.0, 1.0, 1.0); allowed"),
    (lambda cfg: pixels((0.5,), ()), "gave train inputs with mean (0.5,) and std (); allowed"),
    (lambda cfg: ((lambda x, y, xt, yt: ((x * 100).long(), y, xt, yt))(*load_blobs(cfg)[0]), 2),
     "'odd' gave train inputs of dtype torch.int64; allowed: uint8 pixels (decoded to [0, 1]) or floating-point"),
    (lambda cfg: ((lambda x, y, xt, yt: (x, y, xt[:, :4], yt))(*load_blobs(cfg)[0]), 2),
     "'odd' gave train inputs of shape (6,) and test inputs of shape (4,); allowed: one shape for both"),
    (lambda cfg: ((lambda x, y, xt, yt: (x.tolist(), y, xt, yt))(*load_blobs(cfg)[0]), 2),
     "'odd' gave train inputs as a list; allowed: a tensor, a numpy array or gstlab.data.Images"),
], ids=["no-classes", "float-labels", "labels-beyond-classes", "nan-inputs", "zero-std", "nan-mean", "3-of-2-channels",
        "mean-without-std", "int64-inputs", "two-shapes", "a-list"])
def test_a_registered_data_set_must_return_class_indices_within_its_classes(registered, tmp_path, source, message):
    datasets.register("odd", source)
    try:
        with pytest.raises(C.ConfigError) as err:
            execute(C.parse(CFG, ["data.name=odd"]), tmp_path / "run")
        assert message in str(err.value)
    finally:
        datasets.unregister("odd")


def test_an_architecture_must_build_a_module_instance(registered, tmp_path):
    architectures.register("a_class", lambda cfg, shape, classes: TwoLayerNet)
    try:
        with pytest.raises(C.ConfigError, match="model.arch: 'a_class' built a type, not a torch.nn.Module instance"):
            execute(C.parse(CFG, ["model.arch=a_class"]), tmp_path / "run")
    finally:
        architectures.unregister("a_class")


def test_float64_scores_are_selected_in_float64(registered, tmp_path):
    """Scores that differ below float32's resolution (or beyond its range) were cast first: ties, or inf."""
    order = torch.tensor([5, 3, 9, 0, 12, 7, 1, 14, 2, 10, 6, 15, 4, 11, 8, 13], dtype=torch.float64)
    criteria.register("fine", Scores(lambda n: 1.0 + 1e-9 * order))
    try:
        execute(C.parse(CFG, ["pruning.criterion=fine"]), tmp_path / "run")
    finally:
        criteria.unregister("fine")
    with open(tmp_path / "run" / "events.csv") as f:
        first = next(csv.DictReader(f))
    assert sorted(int(u) for u in first["units"].split()) == sorted(order.argsort()[:4].tolist())  # Prune_S


class Meddler(Recorder):
    """A callback that changes weights (noise on every weight) or prunes units behind the pruner's back."""

    def __init__(self, prune: bool) -> None:
        super().__init__()
        self.prune = prune

    def after_epoch(self, run, epoch, events) -> None:
        if self.prune:
            run.masks.prune("hidden", torch.tensor([5]))
        else:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.add_(0.01)


class Borrower(Recorder):
    """Perturbs every weight, evaluates, and copies the weights back exactly; draws from torch's global RNG."""

    def after_epoch(self, run, epoch, events) -> None:
        saved = [p.detach().clone() for p in run.model.parameters()]
        with torch.no_grad():
            for p in run.model.parameters():
                p.add_(torch.randn_like(p))
            for p, w in zip(run.model.parameters(), saved):
                p.copy_(w)
        super().after_epoch(run, epoch, events)


class Tweaker(Recorder):
    """Changes one buffer, as a callback that ran the model in train mode would change BatchNorm's statistics."""

    def after_epoch(self, run, epoch, events) -> None:
        run.model.register_buffer("seen", torch.ones(1)) if epoch == 0 else run.model.seen.add_(1)


def test_a_callback_that_changes_weights_buffers_or_masks_is_refused(registered, tmp_path):
    run = prepare(C.parse(CFG), tmp_path / "run")
    run.callbacks.append(Meddler(prune=False))
    with pytest.raises(C.ConfigError, match=r"^epoch callback Meddler changed the model's hidden.weight in epoch 0; "
                                            r"callbacks observe \(they are not part of the run id\): restore"):
        run_epoch(run, 0)
    run = prepare(C.parse(CFG), tmp_path / "buffer")
    run.callbacks.append(Tweaker())
    with pytest.raises(C.ConfigError, match="epoch callback Tweaker changed the model's seen in epoch 0"):
        run_epoch(run, 0)  # a buffer added
    run.model.seen = torch.ones(1)
    with pytest.raises(C.ConfigError, match="epoch callback Tweaker changed the model's seen in epoch 1"):
        run_epoch(run, 1)  # a buffer changed
    run = prepare(C.parse(CFG), tmp_path / "again")
    run.callbacks.append(Meddler(prune=True))
    with pytest.raises(C.ConfigError, match="epoch callback Meddler changed run.masks in epoch 0; a callback may read"):
        run_epoch(run, 0)
    run = prepare(C.parse(CFG), tmp_path / "ends")
    run.callbacks.append(MeddlerThatEnds(prune=True))  # ending the run does not let its pruning through
    with pytest.raises(C.ConfigError, match="epoch callback MeddlerThatEnds changed run.masks in epoch 0"):
        run_epoch(run, 0)


class Act(Recorder):
    """Does one thing to the model after each epoch (and nothing else)."""

    def __init__(self, act) -> None:
        super().__init__()
        self.act = act

    def after_epoch(self, run, epoch, events) -> None:
        self.act(run.model)


def _train_mode_forward(model) -> None:
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 6))


@pytest.mark.parametrize(("act", "changed", "sets"), [
    (lambda m: m.hidden.weight.requires_grad_(False), "the model's parameter hidden.weight (its object or "
                                                       "requires_grad)", []),
    (lambda m: setattr(m.hidden, "bias", nn.Parameter(m.hidden.bias.detach().clone())),
     "the model's parameter hidden.bias (its object or requires_grad)", []),
    (_train_mode_forward, "the activation tracker's scores", ["pruning.criterion=activation",
                                                              "pruning.activation_every=1"]),
])
def test_what_a_callback_may_not_change_beyond_the_values_is_refused(registered, tmp_path, act, changed, sets):
    run = prepare(C.parse(CFG, sets), tmp_path / "run")
    run.callbacks.append(Act(act))
    with pytest.raises(C.ConfigError, match=rf"^epoch callback Act changed {re.escape(changed)} in epoch 0; "):
        run_epoch(run, 0)


def test_state_is_compared_bit_for_bit():
    nan, zero = float("nan"), torch.tensor([0.0, 1.0])
    assert first_change({"w": torch.tensor([nan, 1.0])}, {"w": torch.tensor([nan, 1.0])}) is None
    assert first_change({"w": zero}, {"w": torch.tensor([-0.0, 1.0])}) == "w"  # == would call them equal
    assert first_change({"w": zero}, {"w": zero.double()}) == "w"
    assert first_change({"w": zero, "b": 1}, {"w": zero}) == "b"
    assert first_change({"w": zero}, {"w": zero, "new": 1}) == "new"
    assert first_change({"s": {"t": np.arange(3)}}, {"s": {"t": np.arange(3)}}) is None


class WithExtraState(nn.Module):
    """A module whose state dict holds a non-tensor entry (``get_extra_state``)."""

    def __init__(self) -> None:
        super().__init__()
        self.setting = {"scale": np.float64(2.0), "table": np.arange(3)}

    def get_extra_state(self):
        return self.setting

    def set_extra_state(self, state) -> None:
        self.setting = state

    def forward(self, x):
        return x


def test_non_tensor_state_entries_are_compared_too(registered, tmp_path):
    run = prepare(C.parse(CFG), tmp_path / "run")
    run.model.extra = WithExtraState()
    run.callbacks.append(Recorder())
    run_epoch(run, 0)  # an unchanged array-valued extra state passes
    run.callbacks.append(Act(lambda m: m.extra.setting.update(scale=np.float64(3.0))))
    with pytest.raises(C.ConfigError, match=r"^epoch callback Act changed the model's extra._extra_state in epoch 1"):
        run_epoch(run, 1)


def test_a_callback_that_restores_what_it_changes_leaves_the_run_as_without_it(registered, tmp_path):
    plain = prepare(C.parse(CFG), tmp_path / "plain")
    borrowed = prepare(C.parse(CFG), tmp_path / "borrowed")
    borrowed.callbacks.append(Borrower())
    for epoch in range(2):
        rng = torch.get_rng_state()
        run_epoch(borrowed, epoch)
        after = torch.get_rng_state()
        torch.set_rng_state(rng)  # the plain run's epoch starts from the same global random state
        run_epoch(plain, epoch)
        assert torch.equal(torch.get_rng_state(), after)  # the callback's draws were put back
    assert len(borrowed.callbacks[0].seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                 borrowed.model.state_dict().values()))
    assert [r["test_acc"] for r in plain.rows["metrics"]] == [r["test_acc"] for r in borrowed.rows["metrics"]]


class MeddlerThatEnds(Meddler):
    def after_epoch(self, run, epoch, events) -> None:
        super().after_epoch(run, epoch, events)
        raise EndRun("done")


def test_a_registered_data_set_may_hand_over_numpy_arrays_and_integers(registered, tmp_path):
    def as_numpy(cfg):
        (x, y, xt, yt), _ = load_blobs(cfg)
        return (x.numpy(), y.numpy(), xt.numpy(), yt.numpy()), np.int64(2)

    datasets.register("numpy_blobs", as_numpy)
    try:
        summary = execute(C.parse(CFG, ["data.name=numpy_blobs"]), tmp_path / "numpy")
    finally:
        datasets.unregister("numpy_blobs")
    reference = execute(C.parse(CFG), tmp_path / "tensors")
    assert summary["status"] == "finished" and summary["best_test_acc"] == reference["best_test_acc"]
