"""The Python API (gstlab.api.run): the example with a model outside the zoo on in-memory tensors runs; user
models and data take the CLI's path (run directory, skip, resume) under run ids that fingerprint them; the zoo
path keeps its run ids."""

import copy
import csv
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, TensorDataset

from gstlab import api, runner
from gstlab import config as C
from gstlab.callbacks import EndRun
from gstlab.cli import main as cli_main
from gstlab.models import PrunableUnit
from test_runner import interrupt_at

spec = importlib.util.spec_from_file_location("custom_model", Path(__file__).parents[1] / "examples/custom_model.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

SHORT = {**example.CONFIG, "train": {"epochs": 3, "batch_size": 64, "progress": False},
         "pruning": {**example.CONFIG["pruning"], "layers": [{"name": "conv1", "fraction": 0.5, "start": 0, "end": 2}]}}
DATA = example.make_data(128, 64)


def net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return example.SmallCNN()


class BatchNormsDeclaredLast(example.SmallCNN):
    """SmallCNN with its BatchNorms declared after both convs: module declaration order pairs conv1 with none,
    though the forward pass normalizes conv1's output with bn1."""

    def __init__(self) -> None:
        super().__init__()
        bn1, bn2, head = self.bn1, self.bn2, self.head
        del self.bn1, self.bn2, self.head, self.conv2
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.bn1, self.bn2, self.head = bn1, bn2, head


class BatchNormOfTheSecondConv(torch.nn.Module):
    """A BatchNorm declared right after conv1 normalizes conv2's output: declaration order pairs it with conv1,
    whose masking would then cut channels of conv2's normalization."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.head = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(x.mean((2, 3)))


class TwoBranches(torch.nn.Module):
    """Two convs on the input, both run before either output is normalized (bn1 after conv1, bn2 after conv2 in
    the data flow, not in the run order). ``relu_first``: a ReLU that is not in place between each conv and its
    BatchNorm (no tensor links them)."""

    def __init__(self, relu_first: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(16, 4)
        self.relu_first = relu_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x), self.conv2(x)
        if self.relu_first:
            a, b = torch.relu(a), torch.relu(b)
        x = torch.cat([torch.relu_(self.bn1(a)), torch.relu_(self.bn2(b))], 1)
        return self.head(x.mean((2, 3)))


class ReluBeforeBatchNormsDeclaredLast(torch.nn.Module):
    """conv1, ReLU (not in place: no tensor links conv1 to bn1), bn1, conv2, bn2; the BatchNorms declared last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn1, self.bn2, self.head = torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(torch.relu(self.conv1(x)))
        return self.head(self.bn2(torch.relu(self.conv2(x))).mean((2, 3)))


class Conv1Into(example.SmallCNN):
    """SmallCNN whose conv1 output goes through ``make(8)`` (a module on 8 channels) before bn1 sees it."""

    def __init__(self, make) -> None:
        super().__init__()
        self.between = make(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn1(self.between(self.conv1(x)))), 2)
        return self.head(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class Conv1Twice(example.SmallCNN):
    """conv1 applied twice (weight tying), each output normalized by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1b = torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x))) + torch.relu(self.bn1b(self.conv1(x)))
        return self.head(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def spectral(model: torch.nn.Module) -> torch.nn.Module:
    torch.nn.utils.parametrizations.spectral_norm(model.conv1)
    return model


class UnitsAsAList(example.SmallCNN):
    prunable_units = [PrunableUnit("conv1", "conv1", bn="bn1")]


class Aliased(example.SmallCNN):
    """conv1 registered a second time, as ``conv``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = self.conv1


def results(out: Path) -> tuple[list[dict], dict]:
    """metrics.csv without the wall-clock column, and summary.json."""
    with open(out / "metrics.csv") as f:
        metrics = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    return metrics, json.loads((out / "summary.json").read_text())


def test_the_example_runs_and_a_second_call_finds_the_finished_run(tmp_path, capsys):
    summary = example.main(str(tmp_path / "run"))
    assert summary["status"] == "finished" and summary["n_events"] == 8
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["supplied"].startswith("SmallCNN:")
    assert saved["data"]["supplied"].startswith("512+256 of 1x12x12, 4 classes:")
    cfg = C.from_dict(C.RunConfig, saved)
    assert summary["run_id"] == C.run_id(cfg) != C.run_id(C.parse(example.CONFIG))
    stamp = (tmp_path / "run" / "manifest.json").stat().st_mtime_ns
    assert example.main(str(tmp_path / "run")) == summary
    assert (tmp_path / "run" / "manifest.json").stat().st_mtime_ns == stamp  # not run again
    assert "finished, 8 pruning events" in capsys.readouterr().out


def test_user_objects_are_not_changed_and_a_different_model_is_another_run(tmp_path):
    model = net(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    api.run(SHORT, tmp_path / "run", model=model, data=DATA)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(runner.RunDirError, match=r"holds a different run .*; choose another out$"):
        api.run(SHORT, tmp_path / "run", model=net(1), data=DATA)
    api.run(SHORT, tmp_path / "my--out", model=model, data=DATA)  # the argument is named, the path kept whole
    with pytest.raises(runner.RunDirError, match=r"my--out holds a different run .*; choose another out$"):
        api.run(SHORT, tmp_path / "my--out", model=net(1), data=DATA)
    with pytest.raises(runner.RunDirError, match="holds a different run"):
        api.run(SHORT, tmp_path / "run", model=model, data=example.make_data(128, 64, seed=1))


def test_load_model_without_a_model_builds_the_registered_architecture_the_run_trained(tmp_path):
    """A run of gstlab's own model loads without one: the architecture its config names, built anew (torch's
    random state untouched), reaches the run's final test accuracy; one given must be of that class; a run of a
    given model asks for it."""
    from gstlab.data import load_data

    config = {"data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 128,
                       "synthetic_test": 64},
              "model": {"arch": "mlp", "hidden": [16], "batch_norm": True},
              "train": {"epochs": 2, "batch_size": 32, "progress": False},
              "pruning": {"criterion": "l2", "side": "smallest", "period": 1,
                          "layers": [{"name": "fc1", "fraction": 0.5, "start": 0, "end": 1}]}, "seed": 3}
    summary = api.run(config, tmp_path / "zoo")
    state = torch.random.get_rng_state()
    model = api.load_model(tmp_path / "zoo").eval()
    assert torch.equal(torch.random.get_rng_state(), state)
    data = load_data(C.parse(config).data, seed=0)  # the test set does not depend on the seed
    with torch.no_grad():
        accuracy = 100.0 * (model(data.x_test[:]).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(summary["final_test_acc"], abs=1e-9)
    assert int((model.fc1.unit_mask == 0).sum()) == 8
    assert api.load_model(tmp_path / "zoo", model).fc1 is model.fc1  # gstlab's own class, given: loaded into it

    class Flipped(type(model)):  # fits the weights, computes something else
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    flipped = Flipped.__new__(Flipped)
    flipped.__dict__.update(copy.deepcopy(model).__dict__)
    with pytest.raises(C.ConfigError, match=r"^model: a Flipped; the run in .*zoo trained a MLP \(model.arch "
                                            r"'mlp'\); allowed: a MLP$"):
        api.load_model(tmp_path / "zoo", flipped)
    api.run(SHORT, tmp_path / "mine", model=net(0), data=DATA)
    with pytest.raises(C.ConfigError, match=r"^model: none given; the run in .*mine trained a SmallCNN given to "
                                            r"gstlab.api.run \(model.supplied\); allowed: that model, e.g. "
                                            r"load_model\(out, SmallCNN\)$"):
        api.load_model(tmp_path / "mine")


def test_load_model_needs_only_the_model_and_data_a_run_named_registered_now(tmp_path):
    """A run of gstlab's own MLP pruned by a plugin's criterion loads after the plugin is gone (with or without
    a model given): only the config's model and data sections are read."""
    from gstlab.pruning.criteria import L2
    from gstlab.registry import criteria

    config = {"data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 64,
                       "synthetic_test": 32},
              "model": {"arch": "mlp", "hidden": [16]}, "train": {"epochs": 1, "batch_size": 32, "progress": False},
              "pruning": {"criterion": "plugin_l2", "side": "smallest", "period": 1,
                          "layers": [{"name": "fc1", "fraction": 0.5, "start": 0, "end": 0}]}}
    criteria.register("plugin_l2", L2)
    try:
        api.run(config, tmp_path / "run")
    finally:
        criteria.unregister("plugin_l2")
    model = api.load_model(tmp_path / "run")
    assert api.load_model(tmp_path / "run", model) is model and int((model.fc1.unit_mask == 0).sum()) == 8


def test_load_model_puts_back_a_buffer_outside_the_state_dict(tmp_path):
    """Until 2026-12-07 model_final.pt held the state dict only: the loaded model centred by 0, not the run's
    running mean, and its accuracy was not the run's."""
    summary = api.run(SHORT, tmp_path / "run", model=WithUnsavedCentre, data=DATA)
    model = api.load_model(tmp_path / "run", WithUnsavedCentre).eval()
    assert model.centre != 0
    with torch.no_grad():
        accuracy = 100.0 * (model(DATA[2]).argmax(1) == DATA[3]).float().mean().item()
    assert accuracy == pytest.approx(summary["final_test_acc"], abs=1e-9)


def test_load_model_gives_the_runs_trained_model(tmp_path):
    """The loaded model reaches the run's final test accuracy on its test set; its pruned units are zeros and
    its masks the run's. A model of another shape or class is one line; so is a directory without a saved model."""
    from gstlab.remeasure import CheckpointError

    summary = api.run(SHORT, tmp_path / "run", model=net(0), data=DATA)
    model = api.load_model(tmp_path / "run", example.SmallCNN).eval()
    with torch.no_grad():
        accuracy = 100.0 * (model(DATA[2]).argmax(1) == DATA[3]).float().mean().item()
    assert accuracy == pytest.approx(summary["final_test_acc"], abs=1e-9)
    dead = model.conv1.unit_mask == 0
    assert int(dead.sum()) == model.conv1.out_channels // 2  # SHORT prunes half of conv1 by its last event
    assert (model.conv1.weight[dead] == 0).all() and (model.conv1.weight[~dead] != 0).any()
    with pytest.raises(C.ConfigError, match=r"^model: the weights of .* do not fit a SmallCNN \(.*\); allowed: the "
                                            r"architecture the run trained$"):
        api.load_model(tmp_path / "run", example.SmallCNN(classes=3))

    class SameWeightsOtherCode(example.SmallCNN):  # fits the weights, computes something else
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    with pytest.raises(C.ConfigError, match=r"^model: a SameWeightsOtherCode; the run in .*run trained a SmallCNN "
                                            r"\(model.supplied\); allowed: a SmallCNN$"):
        api.load_model(tmp_path / "run", SameWeightsOtherCode())
    with pytest.raises(CheckpointError, match="no such directory"):
        api.load_model(tmp_path / "nothing", example.SmallCNN)
    other = {**SHORT, "pruning": {**SHORT["pruning"], "layers": [{"name": "conv2", "fraction": 0.5, "start": 0,
                                                                   "end": 2}]}}
    api.run(other, tmp_path / "other", model=net(0), data=DATA)
    again = api.load_model(tmp_path / "other", model)  # the first run's conv1 mask is dropped, not a misfit
    assert again is model and not hasattr(model.conv1, "unit_mask") and (model.conv2.unit_mask == 0).any()


def test_a_model_function_is_seeded_by_the_run_seed():
    ids = [_run_id(model=example.SmallCNN, seed=s) for s in (0, 0, 1)]
    assert ids[0] == ids[1] != ids[2]


def _run_id(model, seed: int = 0, data=DATA, units=None) -> str:
    cfg = C.parse(SHORT, [f"seed={seed}"])
    parts = api.Parts(units=None if units is None else api._units_of(units))
    _, fingerprint = api._supplied_model(model, cfg, parts)
    _, data_fingerprint = api._supplied_data(data)
    return C.run_id(C.replace(cfg, model=C.replace(cfg.model, supplied=fingerprint),
                              data=C.replace(cfg.data, supplied=data_fingerprint)))


def test_datasets_and_loaders_fingerprint_as_their_tensors():
    x_train, y_train, x_test, y_test = DATA
    as_sets = (TensorDataset(x_train, y_train), DataLoader(TensorDataset(x_test, y_test), batch_size=7))
    assert _run_id(net, data=as_sets) == _run_id(net, data=DATA)
    assert _run_id(net, units=["conv1", "conv2"]) != _run_id(net)  # the prunable units are part of the model


class Scaled(example.SmallCNN):
    """SmallCNN whose forward reads plain attributes (the module tree's repr does not show them)."""

    def __init__(self, scale: float = 1.0, act=torch.relu) -> None:
        super().__init__()
        self.scale, self.act = scale, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.act(x * self.scale))


def frozen_conv1(seed: int = 0) -> torch.nn.Module:
    model = net(seed)
    model.conv1.requires_grad_(False)
    return model


def test_a_models_plain_attributes_and_frozen_parameters_are_part_of_its_id():
    """Each of these computes something else; one id would hand one's results to the other from a store."""
    same = _run_id(lambda: Scaled(1.0))
    assert _run_id(lambda: Scaled(1.0)) == same
    assert len({same, _run_id(lambda: Scaled(100.0)), _run_id(lambda: Scaled(1.0, torch.sigmoid))}) == 3
    assert _run_id(frozen_conv1) != _run_id(net)
    k = 3.0
    assert _run_id(lambda: Scaled(1.0, lambda x: x * k)) != _run_id(lambda: Scaled(1.0, lambda x: x * 2.0))


def test_partials_and_self_capturing_closures_fingerprint(tmp_path):
    slopes = [_run_id(lambda s=s: Scaled(1.0, functools.partial(F.leaky_relu, negative_slope=s))) for s in (0.1, 0.5)]
    assert slopes[0] != slopes[1]

    def recursive():
        def act(x, d=2):
            return x if d == 0 else act(torch.relu(x), d - 1)
        return act

    assert _run_id(lambda: Scaled(1.0, recursive())) == _run_id(lambda: Scaled(1.0, recursive()))


def test_a_models_id_is_the_same_in_another_process(tmp_path):
    """No memory address enters the id (a function attribute's repr holds one): a resumed run or a sweep
    worker in another process computes the same id."""
    script = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]\n"
              "import torch, test_api\n"
              "print(test_api._run_id(lambda: test_api.Scaled(2.0, torch.sigmoid)))\n")
    ids = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=tmp_path).stdout.strip() for _ in range(2)}
    assert ids == {_run_id(lambda: Scaled(2.0, torch.sigmoid))}


class WithDropout(example.SmallCNN):
    """SmallCNN with dropout on its input: training draws from torch's global random stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.dropout(x, 0.3, self.training))


class WithUnsavedCentre(example.SmallCNN):
    """SmallCNN that centres its input by a running mean kept in a buffer outside the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.centre.mul_(0.5).add_(0.5 * x.mean() + 0.1)
        return super().forward(x - 10 * self.centre)


@pytest.mark.parametrize("model", [net, WithDropout, WithUnsavedCentre], ids=["plain", "dropout", "unsaved buffer"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch, model):
    """With dropout, the resumed run must continue the global random stream (it restarted from the seed); with a
    buffer outside the state dict, from the buffer's value (until 2026-12-07 it restarted from the initial one)."""
    api.run(SHORT, tmp_path / "whole", model=model, data=DATA)
    real = interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        api.run(SHORT, tmp_path / "cut", model=model, data=DATA)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    epochs = []
    monkeypatch.setattr(runner, "run_epoch", lambda run, epoch: epochs.append(epoch) or real(run, epoch))
    api.run(SHORT, tmp_path / "cut", model=model, data=DATA)
    assert epochs == [2]  # resumed from the checkpoint after epoch 1
    assert results(tmp_path / "cut") == results(tmp_path / "whole")
    assert torch.equal(torch.load(tmp_path / "cut" / "model_final.pt")["model"]["conv1.weight"],
                       torch.load(tmp_path / "whole" / "model_final.pt")["model"]["conv1.weight"])


def test_the_cli_refuses_a_config_whose_model_only_the_api_has(tmp_path, capsys):
    api.run(SHORT, tmp_path / "run", model=net(), data=DATA)
    assert cli_main(["run", "--config", str(tmp_path / "run" / "config.yaml"), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "model.supplied: this run's model was given to gstlab.api.run (SmallCNN:" in err
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"units": ["conv1"]}, "units: give them with model=..."),
    ({"model": net, "data": DATA, "units": ["bn1"]}, "units[0]: 'bn1' is a BatchNorm2d; only Conv1d/Conv2d/Linear"),
    ({"model": net, "data": DATA[:3]}, "data: expected (x_train, y_train, x_test, y_test) tensors"),
    ({"model": net, "data": (DATA[0], DATA[1][:5], DATA[2], DATA[3])}, "data: the train split has 128 inputs and 5"),
    ({"model": net, "data": (DATA[0], DATA[1].float(), DATA[2], DATA[3])}, "data: y_train must be class indices"),
    ({"model": net, "data": DATA, "config": ["model.width=0.5"]}, "model.width: not used for a model given to"),
    ({"model": net, "data": DATA, "config": ["data.name=cifar10"]}, "data.name: not used for data given to"),
    ({"model": net, "data": DATA, "config": ["pruning.layers.0.name=head.x"]}, "pruning.layers[0].name: unknown"),
    ({"model": 3}, "model: expected an nn.Module or a function that builds one, got int"),
    ({"model": net, "data": DATA, "units": "conv1"}, "units: 'conv1' is one unit; allowed: a list"),
    ({"model": net, "data": DATA, "units": [PrunableUnit("u", "conv9")]},
     "units[0] (u): module 'conv9' is not in the model; allowed: a Conv1d, Conv2d or Linear"),
    ({"model": net, "data": DATA, "units": [PrunableUnit("u", "conv1", bn="bn2")]},
     "units[0] (u): bn 'bn2' is a BatchNorm2d of 16 features; allowed: a BatchNorm of the 8 units of 'conv1'"),
    ({"model": net, "data": DATA, "units": [PrunableUnit("u", "bn1")]}, "module 'bn1' is a BatchNorm2d"),
    ({"model": net, "data": DATA, "units": [PrunableUnit("u", "conv1", activation="relu9")]},
     "units[0] (u): activation 'relu9' is not in the model; allowed: a module of the model (conv1, bn1, "),
    ({"model": net, "data": (TensorDataset(DATA[0], DATA[1] + 0.7), TensorDataset(DATA[2], DATA[3]))},
     "data: y_train must be class indices"),  # float labels from a Dataset were truncated by int()
    ({"model": net, "data": (DATA[0], DATA[1] - 1, DATA[2], DATA[3])},
     "data: y_train must be class indices (a 1-d integer tensor, >= 0), got label -1 (index 0)"),
    ({"model": net, "data": ([{"x": x, "y": y} for x, y in zip(DATA[0], DATA[1])], TensorDataset(*DATA[2:]))},
     "data: item 0 of the train split is a dict; allowed: (input, label) pairs"),
    ({"model": lambda: Aliased(), "data": DATA, "units": [PrunableUnit("u", "conv", bn="bn1")]},
     "units[0] (u): module 'conv' is the module 'conv1' under a second name; name it 'conv1'"),
    ({"model": net, "data": (DATA[0].flatten(1), DATA[1], DATA[2].flatten(1), DATA[3]),
      "config": ["data.augment=true"]},
     "data.augment: random crops and flips need images (C, H, W); the data given to gstlab.api.run has inputs"),
    ({"model": net, "data": DATA, "config": ["data.train_subset=1000"]},
     "data.train_subset: 1,000 examples asked but the data given to gstlab.api.run has 128"),
    ({"model": lambda: example.SmallCNN(classes=2), "data": DATA},
     "model: 2 inputs give shape (2, 2); the data has 4 classes, so allowed: (batch, 4) logits"),
    ({"model": net, "data": (DATA[0][:, :, :8, :8].repeat(1, 2, 1, 1), DATA[1], DATA[2][:, :, :8, :8].repeat(
        1, 2, 1, 1), DATA[3])}, "model: its forward pass fails on an input of shape (2, 8, 8) ("),
    ({"model": BatchNormsDeclaredLast, "data": DATA},
     "unit 'conv1': the forward pass applies BatchNorm 'bn1' to the output of 'conv1', but it is paired with no "
     "BatchNorm by module declaration order; declare PrunableUnit('conv1', 'conv1', bn='bn1')"),
    ({"model": BatchNormOfTheSecondConv, "data": DATA},
     "unit 'conv1': the forward pass applies 'bn' to the output of 'conv2', but it is paired with 'bn' by module "
     "declaration order; declare PrunableUnit('conv1', 'conv1', bn=None)"),
    ({"model": TwoBranches, "data": DATA, "units": [PrunableUnit("conv1", "conv1", bn="bn2")]},
     "unit 'conv1': the forward pass applies 'bn2' to the output of 'conv2', but it is paired with 'bn2'; declare "
     "PrunableUnit('conv1', 'conv1', bn='bn1')"),
    ({"model": ReluBeforeBatchNormsDeclaredLast, "data": DATA},
     "unit 'conv1': the forward pass applies BatchNorm 'bn1' to the output of 'conv1', but it is paired with no "
     "BatchNorm by module declaration order; declare PrunableUnit('conv1', 'conv1', bn='bn1')"),
    ({"model": lambda: Conv1Into(lambda c: torch.nn.ConvTranspose2d(c, c, 3, padding=1)), "data": DATA},
     "unit 'conv1': the forward pass applies 'bn1' to the output of '<conv_transpose2d, which mixes channels>', but "
     "it is paired with 'bn1' by module declaration order; declare PrunableUnit('conv1', 'conv1', bn=None)"),
    ({"model": lambda: Conv1Into(lambda c: torch.nn.GroupNorm(2, c)), "data": DATA},
     "unit 'conv1': the output of 'conv1' goes into GroupNorm 'between', which would give a pruned unit a non-zero "
     "output"),
    ({"model": Conv1Twice, "data": DATA}, "unit 'conv1': the output of 'conv1' goes into BatchNorms 'bn1' and "
     "'bn1b' (a branch, or a layer used twice), and a unit masks one"),
    ({"model": lambda: spectral(net()), "data": DATA}, "pruning.layers[0] (conv1): module 'conv1' computes its "
     "weight (weight_norm, spectral_norm or another parametrization)"),
    ({"model": net, "data": DATA, "units": ["conv1", PrunableUnit("again", "conv1")]},
     "units[1] (again): module 'conv1' is another unit's too; one mask per layer"),
    ({"model": lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4)), "data": DATA,
      "units": []}, "model: has uninitialized (lazy) parameters; allowed: a model whose parameters exist"),
    ({"model": UnitsAsAList, "data": DATA}, "model.prunable_units: a list; allowed: a method"),
    ({"model": net, "data": DATA, "classes": 3}, "classes: 3; the data has label 3, so allowed: an int >= 4"),
    ({"model": net, "data": DATA, "units": [PrunableUnit("conv1", "conv1", bn="bn1", shortcut="conv2")]},
     "units[0] (conv1): shortcut 'conv2' has no buffer shortcut_mask of 8 entries"),
    ({"model": net, "classes": 4}, "classes: give it with data=...; a registered data set knows its classes"),
    ({"model": net, "data": (DATA[0].index_fill(0, torch.tensor([7]), float("nan")), *DATA[1:])},
     "data (given to gstlab.api.run) gave train inputs with 144 non-finite value(s) (NaN or inf); allowed: finite"),
    ({"model": torch.nn.Linear, "data": DATA}, "model: Linear is a class and Linear() fails (Linear.__init__() "
     "missing 2 required positional arguments"),
    ({"model": net, "data": (DATA[0][:, 0, 0, 0], DATA[1], DATA[2][:, 0, 0, 0], DATA[3])},
     "data (given to gstlab.api.run) gave train inputs of shape (128,), one number per example; allowed: (N, C, "),
    ({"model": net, "data": (DATA[0].to(torch.complex64), DATA[1], DATA[2].to(torch.complex64), DATA[3])},
     "gave train inputs of dtype torch.complex64; allowed: uint8 pixels or real floating-point values"),
    ({"model": net, "data": DATA, "progress": "no"}, "progress: 'no'; allowed: True, False or None"),
])
def test_bad_input_names_what_is_wrong(tmp_path, kwargs, message):
    cfg = C.parse(SHORT, kwargs.pop("config", []))
    with pytest.raises(C.ConfigError) as err:
        api.run(cfg, tmp_path / "run", **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, out, message", [
    (None, "run", "config: got NoneType; allowed: a RunConfig, a mapping as in a YAML config, or the path"),
    ([1], "run", "config: got list"),
    (b"seed: 1", "run", "config: got bytes"),
    ({}, "run", "config: is empty; give at least one field"),
    (SHORT, 5, "out: got int; allowed: a directory path"),
    (SHORT, "", "out: empty (the working directory)"),
    (SHORT, "a\0b", "out: 'a\\x00b' holds a NUL byte"),
])
def test_a_config_or_out_that_is_not_one_is_refused(tmp_path, monkeypatch, config, out, message):
    monkeypatch.chdir(tmp_path)  # an empty out wrote the run into the working directory
    with pytest.raises(C.ConfigError) as err:
        api.run(config, out, model=net(), data=DATA)
    assert message in str(err.value)
    assert not list(tmp_path.iterdir())


def test_the_zoo_path_is_the_cli_path(tmp_path):
    tiny = {"data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 64, "synthetic_test": 32},
            "model": {"arch": "mlp", "hidden": [16]}, "train": {"epochs": 2, "batch_size": 32, "progress": False},
            "pruning": {"layers": [{"name": "fc1", "fraction": 0.5, "start": 0, "end": 1}], "period": 1}}
    summary = api.run(tiny, tmp_path / "api")
    assert summary["run_id"] == C.run_id(C.parse(tiny)) == "6f83af5ee082"  # as main computed it before the API
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    assert cli_main(["run", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "cli")]) == 0
    assert results(tmp_path / "api") == results(tmp_path / "cli")


def test_a_unit_declared_with_the_batchnorm_the_data_flow_applies_runs_and_masks_its_shift(tmp_path):
    model = BatchNormsDeclaredLast()
    assert [n for n, _ in model.named_children()] == ["conv1", "conv2", "bn1", "bn2", "head"]
    summary = api.run(SHORT, tmp_path / "run", model=model, data=DATA, units=[PrunableUnit("conv1", "conv1", bn="bn1")])
    state = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["model"]
    dead = (state["conv1.unit_mask"] == 0).nonzero().flatten()
    assert summary["status"] == "finished" and len(dead) == 4
    x = DATA[0][:8]
    trained = BatchNormsDeclaredLast()
    trained.load_state_dict({k: v for k, v in state.items() if not k.endswith("unit_mask")}, strict=False)
    trained.eval()
    with torch.no_grad():  # a masked unit outputs exactly zero after its BatchNorm: the shift is masked too
        assert not trained.bn1(trained.conv1(x))[:, dead].any()


@pytest.mark.parametrize("relu_first", [False, True])
@pytest.mark.parametrize("declare", [False, True])
def test_two_branches_normalized_after_both_convs_run_with_inferred_or_declared_units(tmp_path, relu_first, declare):
    units = [PrunableUnit("conv1", "conv1", bn="bn1"), PrunableUnit("conv2", "conv2", bn="bn2")] if declare else None
    summary = api.run(SHORT, tmp_path / "run", model=TwoBranches(relu_first), data=DATA, units=units)
    state = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["model"]
    dead = (state["conv1.unit_mask"] == 0).nonzero().flatten()
    assert summary["status"] == "finished" and len(dead) == 4
    assert not state["bn1.weight"][dead].any() and not state["bn1.bias"][dead].any()  # the shift masked too
    assert state["bn2.weight"].all()


def test_declaring_no_batchnorm_for_a_layer_the_data_flow_gives_none_runs(tmp_path):
    summary = api.run(SHORT, tmp_path / "run", model=BatchNormOfTheSecondConv(), data=DATA,
                      units=[PrunableUnit("conv1", "conv1")])
    state = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["model"]
    assert summary["status"] == "finished" and (state["conv1.unit_mask"] == 0).sum() == 4
    assert "bn.unit_mask" not in state and bool((state["bn.weight"] != 0).all())  # conv2's BatchNorm untouched


def test_a_batchnorm_without_affine_parameters_leaves_pruned_units_at_zero_and_ebn_needs_them(tmp_path):
    """Nothing to mask but its running mean: without zeroing it, a dead unit came out as -mean/std in eval mode."""
    def model() -> torch.nn.Module:
        m = net()
        m.bn1 = torch.nn.BatchNorm2d(8, affine=False)
        return m

    api.run(SHORT, tmp_path / "run", model=model, data=DATA)
    state = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)["model"]
    trained = model()
    trained.load_state_dict({k: v for k, v in state.items() if not k.endswith("unit_mask")}, strict=False)
    dead = (state["conv1.unit_mask"] == 0).nonzero().flatten()
    assert len(dead) == 4 and not state["bn1.running_mean"][dead].any()
    with torch.no_grad():
        assert not trained.eval().bn1(trained.conv1(DATA[0][:8]))[:, dead].any()
    with pytest.raises(C.ConfigError, match="pruning.criterion=ebn needs a BatchNorm with gamma and beta"):
        api.run(C.parse(SHORT, ["pruning.criterion=ebn"]), tmp_path / "ebn", model=model, data=DATA)


def test_data_without_its_top_class_runs_with_the_classes_given(tmp_path):
    """A slice with no example of the top class: the largest label + 1 would be one class short."""
    x, y, xt, yt = DATA
    keep, keep_t = y < 3, yt < 3
    part = (x[keep], y[keep], xt[keep_t], yt[keep_t])
    with pytest.raises(C.ConfigError, match="the data has 3 classes, so allowed: \\(batch, 3\\) logits"):
        api.run(SHORT, tmp_path / "short", model=net(0), data=part)
    summary = api.run(SHORT, tmp_path / "run", model=net(0), data=part, classes=np.int64(4))  # any integer type
    assert summary["status"] == "finished"
    assert "4 classes" in C.load_yaml(tmp_path / "run" / "config.yaml")["data"]["supplied"]


class EpochLog:
    """A user's epoch callback: counts epochs (state as a numpy integer) and writes one row per epoch."""

    def __init__(self) -> None:
        self.n = np.int64(0)

    def after_epoch(self, run, epoch, events) -> None:
        self.n += 1
        run.rows.setdefault("epoch_log", []).append({"epoch": epoch, "n": int(self.n), "events": len(events)})

    def write(self, run) -> None:
        rows = run.rows.get("epoch_log", [])
        (run.out / "epoch_log.csv").write_text("".join(f"{r['epoch']},{r['n']},{r['events']}\n" for r in rows))

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = np.int64(state["n"])


class Other(EpochLog):
    pass


def test_a_users_epoch_callbacks_run_resume_and_must_match_on_resume(tmp_path, monkeypatch):
    whole = EpochLog()
    api.run(SHORT, tmp_path / "whole", model=net, data=DATA, callbacks=[whole])
    assert (tmp_path / "whole" / "epoch_log.csv").read_text() == "0,1,1\n1,2,1\n2,3,1\n"
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):  # cut off after epoch 1's checkpoint; the numpy state was saved
        api.run(SHORT, tmp_path / "cut", model=net, data=DATA, callbacks=[EpochLog()])
    monkeypatch.undo()
    with pytest.raises(C.ConfigError, match=r"^callbacks: .*checkpoint.pt was saved with the epoch callbacks "
                                            r"\[test_api.EpochLog\], this run has \[test_api.Other\]"):
        api.run(SHORT, tmp_path / "cut", model=net, data=DATA, callbacks=[Other()])
    resumed = EpochLog()
    api.run(SHORT, tmp_path / "cut", model=net, data=DATA, callbacks=[resumed])
    assert resumed.n == whole.n == 3  # continued from the checkpoint's state
    assert (tmp_path / "cut" / "epoch_log.csv").read_text() == (tmp_path / "whole" / "epoch_log.csv").read_text()
    assert results(tmp_path / "cut") == results(tmp_path / "whole")
    with pytest.raises(C.ConfigError, match=r"callbacks\[0\]: type a class \(give an instance\)"):
        api.run(SHORT, tmp_path / "x", model=net, data=DATA, callbacks=[EpochLog])
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):  # a run saved without callbacks: one added on resume would see a part
        api.run(SHORT, tmp_path / "none", model=net, data=DATA)
    monkeypatch.undo()
    with pytest.raises(C.ConfigError, match=r"^callbacks: .*checkpoint.pt was saved with the epoch callbacks \[\], "
                                            r"this run has \[test_api.EpochLog\]"):
        api.run(SHORT, tmp_path / "none", model=net, data=DATA, callbacks=[EpochLog()])


class StopsAfterEpoch1(EpochLog):
    def after_epoch(self, run, epoch, events) -> None:
        super().after_epoch(run, epoch, events)
        if epoch == 1:
            raise EndRun("the loss is not what this study needs")


def test_a_callback_ends_its_run_as_failed_after_the_epoch_and_the_run_is_final(tmp_path):
    out = tmp_path / "run"
    summary = api.run(SHORT, out, model=net, data=DATA, callbacks=[StopsAfterEpoch1(), EpochLog()])
    assert summary["status"] == "failed"
    assert summary["failure"] == ("epoch callback StopsAfterEpoch1 ended the run after epoch 1: the loss is not "
                                  "what this study needs")
    metrics, _ = results(out)
    assert [r["epoch"] for r in metrics] == ["0", "1"]  # epoch 1 complete: its event and its row
    # both log epoch 0 into one table; in epoch 1 the callback after the one that ended the run does not run
    assert (out / "epoch_log.csv").read_text() == "0,1,1\n0,1,1\n1,2,1\n"
    assert torch.load(out / "model_final.pt", weights_only=True)["epoch"] == 1
    assert api.run(SHORT, out, model=net, data=DATA, callbacks=[StopsAfterEpoch1(), EpochLog()]) == summary


class Uncopyable(torch.nn.Module):
    """A model copy.deepcopy fails on (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.lock = threading.Lock()
        self.inner = example.SmallCNN()

    def forward(self, x):
        return self.inner(x)


def test_a_model_that_cannot_be_copied_is_one_line_on_both_paths(tmp_path):
    """gstlab trains a copy of a user's model: given to the API, or built by a registered architecture."""
    from gstlab.registry import architectures

    with pytest.raises(C.ConfigError, match=r"^model: copy.deepcopy fails on the model \(.*lock.*\); gstlab trains"):
        api.run(SHORT, tmp_path / "api", model=Uncopyable(), data=DATA)
    architectures.register("uncopyable", lambda cfg, shape, classes: Uncopyable())
    try:
        cfg = C.parse({**SHORT, "model": {"arch": "uncopyable"}})
        with pytest.raises(C.ConfigError, match=r"^model.arch: 'uncopyable': copy.deepcopy fails on the model"):
            api.run(cfg, tmp_path / "zoo", data=DATA)
    finally:
        architectures.unregister("uncopyable")
