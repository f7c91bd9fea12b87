"""A user's model: where masking cannot hold a pruned unit at zero, the run is refused in one line before anything
is written; where it can, the masked model computes what the physically smaller one does."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gstlab import api
from gstlab import config as C
from gstlab.layouts import dims_holding, units_at
from gstlab.models import PrunableUnit


def data(shape=(1, 8, 8), n=64, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n + 32) % classes
    x = torch.randn(n + 32, *shape, generator=g) + 1.5 * torch.randn(classes, *shape, generator=g)[y]
    return x[:n], y[:n], x[n:], y[n:]


def config(*layers: str, criterion: str = "l1") -> dict:
    return {"optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 3, "batch_size": 16, "progress": False},
            "pruning": {"criterion": criterion, "period": 1, "activation_every": 1,
                        "layers": [{"name": n, "fraction": 0.5, "start": 1, "end": 2} for n in layers]}}


class Head(nn.Module):
    def head_of(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(x).mean(tuple(range(2, x.dim()))))


class BatchNormTwice(Head):
    """One BatchNorm module applied to two convs' outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        return self.head_of(self.bn(self.conv2(F.relu(self.bn(self.conv1(x))))))


class Concatenated(Head):
    """DenseNet style: a BatchNorm over the concatenation of a conv's output and the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(9), nn.Linear(9, 4)

    def forward(self, x):
        return self.head_of(self.bn1(torch.cat([self.conv1(x), x], 1)))


class ChannelsLastNorm(Head):
    """ConvNeXt style: a LayerNorm over channels, reached through a permutation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.norm, self.head = nn.Conv2d(1, channels, 3, padding=1), nn.LayerNorm(channels), nn.Linear(
            channels, 4)

    def forward(self, x):
        return self.head_of(self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class Rearranged(Head):
    """A BatchNorm reached through an op that moves channels (``how``) though the shape stays."""

    def __init__(self, how) -> None:
        super().__init__()
        self.how, self.conv1, self.bn1 = how, nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head_of(self.bn1(self.how(self.conv1(x))))


class Functional(Head):
    """The conv's weights used through F.conv2d: the module itself never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head_of(self.bn1(F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1)))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)[:, :16])))))


class EvalLockedBatchNorm(nn.BatchNorm2d):
    def train(self, mode: bool = True):
        return super().train(False)


class Residual(Head):
    """conv0 -> bn0 -> relu, then conv1 -> bn1 -> relu -> conv2 -> bn2, plus the skip."""

    def __init__(self, width: int = 8, inner: int = 8) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv1, self.bn1 = nn.Conv2d(width, inner, 3, padding=1), nn.BatchNorm2d(inner)
        self.conv2, self.bn2 = nn.Conv2d(inner, width, 3, padding=1), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = F.relu(self.bn0(self.conv0(x)))
        return self.head_of(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))


def refused(tmp_path, model, *layers, criterion="l1", units=None, data_=None) -> str:
    with pytest.raises(C.ConfigError) as err:
        api.run(config(*layers, criterion=criterion), tmp_path / "run", model=model, units=units,
                data=data_ or data())
    assert not (tmp_path / "run").exists()  # refused before anything is written
    return str(err.value)


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_a_batchnorm_that_runs_twice_is_refused(tmp_path, layer):
    # masking conv1 zeroed the shared shift, killing conv2's channels too; conv2 got no BatchNorm at all
    assert refused(tmp_path, BatchNormTwice, layer) == (
        f"unit {layer!r}: BatchNorm2d 'bn' runs 2 times in one forward pass, and masking a unit zeroes its shift "
        f"for every use; allowed: one normalization module per use")


@pytest.mark.parametrize("channels", [6, 8])
def test_a_channels_last_layernorm_is_followed_to_its_shift_and_refused(tmp_path, channels):
    """ConvNeXt style: the permute puts the conv's channels on the LayerNorm's normalized dimension (with 8
    channels on 8x8 maps the shape does not tell); its statistics and shift give a pruned unit a value."""
    assert "unit 'conv1': the output of 'conv1' goes into LayerNorm 'norm', which would give a pruned unit a " \
           "non-zero output" in refused(tmp_path, lambda: ChannelsLastNorm(channels), "conv1")


@pytest.mark.parametrize("model", [
    Concatenated, lambda: Rearranged(lambda t: t.flip(1)), lambda: Rearranged(lambda t: t[:, [1, 0, *range(2, 8)]]),
    lambda: Rearranged(lambda t: t.transpose(1, 2).transpose(1, 2).roll(1, 1))])
def test_a_normalization_reached_with_moved_channels_is_refused(tmp_path, model):
    """8 channels on 8x8 maps: the permutation keeps the shape, and the lineage must not take it for exact."""
    assert "unit 'conv1': the output of 'conv1' reaches " in (message := refused(tmp_path, model, "conv1"))
    assert "with its channels moved or merged (a concatenation, flatten or permutation), where masking cannot " \
           "follow it" in message


@pytest.mark.parametrize("how", [lambda t: t.permute(0, 1, 3, 2), lambda t: t.transpose(2, 3), lambda t: t.flip(3),
                                 lambda t: t[:, :, 1:]])
def test_ops_that_keep_channels_in_place_pair_the_batchnorm(tmp_path, how):
    summary = api.run(config("conv1"), tmp_path / "run", model=lambda: Rearranged(how), data=data(),
                      units=[PrunableUnit("conv1", "conv1", bn="bn1")])
    assert summary["status"] == "finished" and summary["n_events"] == 2


class TrainingOnlyBranch(Head):
    """An auxiliary head that runs only in training (Inception style), with a scripted activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.aux_conv, self.aux_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = torch.jit.script(nn.ReLU())  # torch refuses forward hooks on a ScriptModule

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        out = self.head_of(h)
        return out + 0.3 * self.head_of(self.aux_bn(self.aux_conv(h))) if self.training else out


def test_layers_the_eval_pass_does_not_see_run_unjudged_and_tied_weights_are_refused(tmp_path):
    """A layer used through its weights (F.conv2d) or only in training is not seen by the eval-mode pass: its
    declared pairing is taken as given (it had been refused, once with wrong advice); tied weights are refused."""
    units = [PrunableUnit("conv1", "conv1", bn="bn1")]
    assert api.run(config("conv1"), tmp_path / "f", model=Functional, units=units, data=data())["status"] == "finished"
    summary = api.run(config("aux_conv"), tmp_path / "aux", model=TrainingOnlyBranch, data=data(),
                      units=[PrunableUnit("aux_conv", "aux_conv", bn="aux_bn")])
    assert summary["status"] == "finished" and summary["n_events"] == 2
    assert refused(tmp_path, Tied, "fc1") == (
        "unit 'fc1': a parameter of 'fc1' is also 'fc2''s (tied), and a mask on it would prune that module's "
        "channels too; allowed: a layer whose parameters are its own")


class TiedBatchNorm(Head):
    """Two BatchNorms sharing gamma and beta: masking conv1's unit zeroed conv2's channel too, unrecorded (an
    audit, 2026-12-07)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.bn2.weight, self.bn2.bias = self.bn1.weight, self.bn1.bias

    def forward(self, x):
        return self.head_of(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_a_batchnorm_tied_to_another_is_refused(tmp_path, layer):
    other = {"conv1": "bn2", "conv2": "bn1"}[layer]
    assert refused(tmp_path, TiedBatchNorm, layer) == (
        f"unit {layer!r}: a parameter of 'bn{layer[-1]}' is also {other!r}'s (tied), and a mask on it would prune "
        f"that module's channels too; allowed: a BatchNorm whose parameters are its own")


def test_the_activation_criterion_needs_a_module_that_runs_once_and_trains(tmp_path):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.head = nn.Linear(64, 64), nn.Linear(64, 4)

        def forward(self, x):
            return self.head(F.relu(self.fc1(F.relu(self.fc1(x.flatten(1))))))

    assert "its activation module 'fc1' runs 2 times in one forward pass" in refused(
        tmp_path, Twice, "fc1", criterion="activation")

    def locked():
        model = Residual()
        model.bn0 = EvalLockedBatchNorm(8)
        return model

    assert "its activation module 'bn0' stays in eval mode when the model trains" in refused(
        tmp_path, locked, "conv0", criterion="activation")


class ActivationAfterFlatten(Head):
    """conv -> BatchNorm -> Flatten -> Unflatten: the Flatten's output holds the conv's units merged with H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 4)
        self.flat, self.back, self.pre = nn.Flatten(), nn.Unflatten(1, (4, 8, 8)), nn.Identity()

    def forward(self, x):
        return self.head_of(self.back(self.flat(self.bn(self.conv(self.pre(x))))))


@pytest.mark.parametrize(("activation", "how"), [
    ("flat", "holds its units moved or merged (a flatten, permutation or concatenation)"),
    ("pre", "does not receive its output")])
def test_an_activation_module_without_the_layers_units_on_one_dimension_is_refused(tmp_path, activation, how):
    """A flatten gave 64 scores for 4 units, refused only at the first event; a permutation would have scored the
    wrong units, unsaid (a review, 2026-12-07)."""
    units = [PrunableUnit("conv", "conv", bn="bn", activation=activation)]
    assert refused(tmp_path, ActivationAfterFlatten, "conv", criterion="activation", units=units) == (
        f"unit 'conv': its activation module {activation!r} {how}, so no activation per unit of 'conv' can be "
        f"read there; pruning.criterion=activation needs a module whose output keeps the layer's units on one "
        f"dimension (declare PrunableUnit(..., activation=...)), or use another criterion")
    units = [PrunableUnit("conv", "conv", bn="bn", activation="back")]  # unflattened: the units are whole again
    summary = api.run(config("conv", criterion="activation"), tmp_path / "ok", model=ActivationAfterFlatten,
                      units=units, data=data())
    assert summary["status"] == "finished"


def test_small_batches_float64_and_aliases_are_one_line_each(tmp_path):
    mlp = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16, track_running_stats=False),  # noqa: E731
                                nn.ReLU(), nn.Linear(16, 4))
    assert api.run(config("1"), tmp_path / "bn", model=mlp, data=data())["status"] == "finished"  # batch stats
    assert refused(tmp_path, lambda: mlp().double(), "1") == (
        "model: parameter '1.weight' is torch.float64; allowed: float32 parameters (runs train in float32, or in "
        "bf16/fp16 under autocast with train.precision): model.float()")

    def aliased():
        model = mlp()
        model.alias = model[1]
        return model

    assert refused(tmp_path, aliased, "alias") == ("pruning.layers[0].name: 'alias' is the module '1' under a "
                                                   "second name; name it '1'")


def _trained(tmp_path, pruned: str) -> tuple[Residual, torch.Tensor]:
    out = tmp_path / pruned
    api.run(config(pruned), out, model=Residual, data=data())
    state = torch.load(out / "model_final.pt", weights_only=True)["model"]
    model = Residual()
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith("unit_mask")})
    return model, state[f"{pruned}.unit_mask"] != 0


def test_a_residual_networks_inner_layer_pruned_is_the_physically_smaller_network(tmp_path):
    masked, alive = _trained(tmp_path, "conv1")
    small = Residual(inner=int(alive.sum()))
    small.load_state_dict({k: (v[alive] if k.startswith(("conv1.", "bn1.")) and v.dim() else v[:, alive]
                               if k == "conv2.weight" else v) for k, v in masked.state_dict().items()})
    masked.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(masked(data()[2]), small(data()[2]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pruned", ["conv0", "conv2"])
def test_a_layer_summed_with_the_skip_is_accepted_and_its_pruned_units_output_zero(tmp_path, pruned):
    """Not refused: the pruned units output exactly zero (train and eval), so each channel of the sum is the
    other branch's, as in the network without those filters; the zoo's ResNets also mask the shortcut
    (PrunableUnit.shortcut), removing the channel from the sum."""
    model, alive = _trained(tmp_path, pruned)
    bn, seen = f"bn{pruned[-1]}", {}
    model.get_submodule(bn).register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            model(data()[2])
        assert (seen["out"][:, ~alive] == 0).all() and (seen["out"][:, alive] != 0).any()


class PreActivationOptionA(Head):
    """A pre-activation residual stage (He et al. 2016) whose shortcut doubles the channels by zero padding
    (option A): conv0's output reaches bn_next shifted by four channels, summed with conv2's whole output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn_pre = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn_next, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.conv0(x)
        out = self.conv2(F.relu(self.bn1(self.conv1(F.relu(self.bn_pre(h))))))
        return self.head_of(self.bn_next(out + F.pad(h[..., ::2, ::2], (0, 0, 0, 0, 4, 4))))


class PointwiseLinear(nn.Module):
    """PointNet style: a Linear on (N, points, features), its features moved onto dimension 1 for BatchNorm1d
    (by ``move``), or (``move`` None: wrongly) a BatchNorm1d over the points."""

    def __init__(self, move=None) -> None:
        super().__init__()
        self.move, self.fc1, self.bn1, self.head = move, nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.fc1(x.flatten(1).view(len(x), 8, 8))
        h = F.relu(self.bn1(h if self.move is None else self.move(h)))
        return self.head(h.amax(2))


class Shifted(Head):
    """A learned shift after a conv outside any BatchNorm (Fixup), a functional GroupNorm, or a learned scale
    (LayerScale: keeps zero)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.conv1, self.head = how, nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 4)
        self.bias = nn.Parameter(torch.full((8,), 0.1))

    def forward(self, x):
        h = self.conv1(x)
        if self.how == "scale":
            return self.head_of(h * self.bias.view(1, -1, 1, 1))
        h = h + self.bias.view(1, -1, 1, 1) if self.how == "bias" else F.group_norm(h, 2, self.bias, self.bias)
        return self.head_of(h)


def _written(permute: bool):
    def write(t):
        out = torch.empty_like(t)
        out[:, [1, 0, *range(2, 8)] if permute else slice(None)] = t
        return out
    return write


@pytest.mark.parametrize("model, layer, shape", [
    (PreActivationOptionA, "conv0", (1, 8, 8)), (lambda: PointwiseLinear(lambda h: h.transpose(1, 2)), "fc1", (8, 8)),
    (lambda: PointwiseLinear(lambda h: h.mT), "fc1", (8, 8)),
    (lambda: Rearranged(lambda t: t[..., 1:, :-1]), "conv1", (1, 8, 8)),
    (lambda: Rearranged(lambda t: t.flatten(1).view(t.shape)), "conv1", (1, 8, 8)),
    (lambda: Rearranged(lambda t: t.permute(0, 2, 3, 1).movedim(3, 1)), "conv1", (1, 8, 8)),
    (lambda: Rearranged(_written(permute=False)), "conv1", (1, 8, 8)), (lambda: Shifted("scale"), "conv1", (1, 8, 8)),
    (lambda: Rearranged(lambda t: torch.cat([u * 2 for u in t.chunk(2, 0)], 0)), "conv1", (1, 8, 8)),
    (lambda: Rearranged(lambda t: t - t.mean((0, 2, 3), keepdim=True)), "conv1", (1, 8, 8)),  # batch centring
    (lambda: Rearranged(lambda t: t * torch.sigmoid(t.mean((0, 2, 3), keepdim=True))), "conv1", (1, 8, 8)),
    (lambda: PointwiseLinear(lambda h: (h - h.amax(1, keepdim=True)).transpose(1, 2)), "fc1", (8, 8))])  # DeepSets
def test_layouts_followed_through_pads_transposes_and_reshapes_are_accepted(tmp_path, model, layer, shape):
    """Each had been refused as moving channels: a shortcut padded into a sum with a whole layer's output (the
    channel lives on in the sum), a Linear's last dimension moved onto BatchNorm1d's channels, an Ellipsis crop,
    a flatten and back, a permute and its inverse, an in-place write of the whole tensor, and a batch split and
    joined again; a learned scale keeps zero, and statistics over the batch or the points (not the units)
    subtracted or gating leave a pruned unit at zero (the fourth review measured it): accepted."""
    summary = api.run(config(layer), tmp_path / "run", model=model, data=data(shape))
    assert summary["status"] == "finished" and summary["n_events"] == 2


@pytest.mark.parametrize("model", [
    lambda: Rearranged(lambda t: t.sum(1).unsqueeze(2)),  # 8 channels on 8x8 maps: (N, 8, 1, 8), channels summed
    lambda: Rearranged(_written(permute=True)), lambda: Rearranged(
        lambda t: torch.index_select(t, 1, torch.tensor([1, 0, *range(2, 8)]), out=torch.empty_like(t)))])
def test_reductions_and_permuting_writes_over_channels_are_refused(tmp_path, model):
    assert "with its channels moved or merged" in refused(tmp_path, model, "conv1")


def test_a_linear_on_points_into_a_batchnorm_over_the_points_is_refused(tmp_path):
    """(N, 8 points, 8 features): the shape fits BatchNorm1d(8), but it normalizes the points, not the units."""
    assert "unit 'fc1': the output of 'fc1' reaches BatchNorm1d 'bn1' with its channels moved or merged" in (
        refused(tmp_path, PointwiseLinear, "fc1", data_=data((8, 8))))


@pytest.mark.parametrize("how, what", [
    ("bias", "parameter 'bias', a learned shift that masking does not zero"),
    ("group_norm", "F.group_norm, whose statistics and shift masking does not zero")])
def test_a_shift_outside_a_batchnorm_is_refused(tmp_path, how, what):
    assert refused(tmp_path, lambda: Shifted(how), "conv1") == (
        f"unit 'conv1': the output of 'conv1' goes through {what}: a pruned unit would get a non-zero output; "
        f"allowed: a shift inside the unit's BatchNorm, or none")


class AfterBatchNorm(Head):
    """conv1 -> bn1, then ``how`` (the second review's reproductions: each had been accepted or refused wrongly)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.conv1, self.bn1, self.head = how, nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(
            8, 4)
        self.bias = nn.Parameter(torch.full((8,), 0.5))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False) if how == "depthwise" else None
        self.bn2 = nn.BatchNorm2d(8) if how == "depthwise" else None

    def forward(self, x):
        h, b = self.bn1(self.conv1(x)), self.bias.view(1, -1, 1, 1)
        if self.how == "add_":
            h.add_(b)
        elif self.how == "expand_as":
            h = h + b.expand_as(h)
        elif self.how == "depthwise":  # MobileNet: the per-channel conv's BatchNorm gives a pruned unit its shift
            h = self.bn2(self.dw(F.relu(h)))
        return self.head_of(h)


class ViewWrites(Head):
    """Memory-efficient DenseNet: the concatenation written into a buffer through views."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(9), nn.Linear(9, 4)

    def forward(self, x):
        h = self.conv1(x)
        buf = x.new_zeros(len(x), 9, *x.shape[2:])
        buf[:, :8].copy_(h)
        buf[:, 8:].copy_(x)
        return self.head_of(self.bn1(buf))


class PreActivation(Head):
    """Pre-activation blocks with identity skips: by declaration order conv2 pairs with next_bn, which
    normalizes the sum with the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.next_bn, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv0(x)
        h = h + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(h))))))
        return self.head_of(self.next_bn(h))


class TokenMLP(nn.Module):
    """A transformer's MLP on (N, T, D) tokens with the residual: pre-LayerNorm, or post-LayerNorm (``post``, the
    original Transformer's order)."""

    def __init__(self, post: bool = False) -> None:
        super().__init__()
        self.post, self.embed, self.ln1 = post, nn.Linear(8, 16), nn.LayerNorm(16)
        self.fc1, self.fc2, self.ln2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.LayerNorm(16), nn.Linear(
            16, 4)

    def forward(self, x):
        if self.post:
            x = self.ln1(self.embed(x))
            return self.head(self.ln2(x + self.fc2(F.relu(self.fc1(x)))).mean(1))
        x = self.embed(x)
        x = x + self.fc2(F.gelu(self.fc1(self.ln1(x))))
        return self.head(self.ln2(x).mean(1))


class ShiftThenBatchNorm(Head):
    """A learned shift before the unit's own affine BatchNorm (``buffered``: written into a buffer first): masking
    the BatchNorm zeroes the unit anyway."""

    def __init__(self, buffered: bool = False) -> None:
        super().__init__()
        self.buffered, self.conv1, self.bn1 = buffered, nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pos, self.head = nn.Parameter(0.5 * torch.randn(1, 8, 8, 8)), nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv1(x) + self.pos
        if self.buffered:
            buf = torch.empty_like(h)
            buf[:] = h
            h = buf
        return self.head_of(self.bn1(h))


@pytest.mark.parametrize("how, what", [
    ("add_", "parameter 'bias', a learned shift"), ("expand_as", "parameter 'bias', a learned shift"),
    ("depthwise", "a per-channel conv2d (groups=8), whose channels masking does not follow")])
def test_in_place_and_shape_only_shifts_and_depthwise_convs_are_refused(tmp_path, how, what):
    assert f"unit 'conv1': the output of 'conv1' goes through {what}" in refused(
        tmp_path, lambda: AfterBatchNorm(how), "conv1")


@pytest.mark.parametrize("model", [
    ViewWrites, lambda: Rearranged(lambda t: torch.stack(t.unbind(1), -1)),  # a permute by unbind and stack
    lambda: Rearranged(lambda t: t.transpose(np.int64(1), 3))])
def test_writes_through_views_unbind_and_numpy_dims_move_channels(tmp_path, model):
    assert "with its channels moved or merged" in refused(tmp_path, model, "conv1")


def test_a_batchnorm_after_a_residual_sum_is_not_a_units_own(tmp_path):
    assert refused(tmp_path, PreActivation, "conv2") == (
        "unit 'conv2': its BatchNorm 'next_bn' also normalizes the output of 'conv0' (a sum, such as a residual's "
        "skip), and masking it would cut their channel; declare PrunableUnit('conv2', 'conv2', bn=None) (the "
        "channel lives on in the sum) or the BatchNorm the layer alone feeds")
    summary = api.run(config("conv2"), tmp_path / "run", model=PreActivation, data=data(),
                      units=[PrunableUnit("conv2", "conv2", bn=None)])
    assert summary["status"] == "finished" and summary["n_events"] == 2


@pytest.mark.parametrize("model, layer, shape", [(TokenMLP, "fc2", (8, 8)), (ShiftThenBatchNorm, "conv1", (1, 8, 8))])
def test_a_transformer_mlp_output_and_a_shift_before_the_units_batchnorm_are_accepted(tmp_path, model, layer, shape):
    """fc2's features are the LayerNorm's normalized dimension, summed with the residual (the channel lives on);
    the unit's own affine BatchNorm zeroes a pruned unit whatever shift came before it."""
    summary = api.run(config(layer), tmp_path / "run", model=model, data=data(shape))
    assert summary["status"] == "finished" and summary["n_events"] == 2


class BatchNormPlus(nn.BatchNorm2d):
    """A BatchNorm subclass adding its own shift after normalizing: masking zeroes weight and bias, not it."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.extra = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x):
        return super().forward(x) + self.extra.view(1, -1, 1, 1)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's own LayerNorm over channels, written out with mean and var over dimension 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels) + 0.1)

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        x = (x - u) / ((x - u).pow(2).mean(1, keepdim=True) + 1e-6).sqrt()
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Then(Head):
    """conv1 -> bn1 -> relu -> ``after`` -> conv2 -> head; ``after`` a module, or a function of (self, h)."""

    def __init__(self, make_after) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.after = make_after()
        self.conv2, self.head = nn.Conv2d(8, 8, 1), nn.Linear(8, 4)
        self.bias = nn.Parameter(torch.full((8,), 0.5))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.after(self, h) if callable(self.after) and not isinstance(self.after, nn.Module) else self.after(h)
        return self.head_of(self.conv2(h))


class ByKeyword(nn.Module):
    """Calls its GroupNorm with the input by keyword (forward hooks then get no positional input)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, h):
        return self.norm(input=h)


def _depthwise(groups, bias: bool, norm: bool):
    return lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=bias),
                                 *([nn.BatchNorm2d(8)] if norm else []))


@pytest.mark.parametrize("model", [
    lambda: Then(lambda: lambda self, h: h + self.bias.view(1, -1, 1, 1)),  # then a plain conv: the shift reaches it
    lambda: Then(lambda: ChannelsFirstLayerNorm(8)), lambda: Then(_depthwise(np.int64(8), bias=False, norm=True)),
    lambda: Then(_depthwise(8, bias=True, norm=False)),
    lambda: Then(lambda: lambda self, h: torch.jit.script(nn.ReLU())(h + self.bias.view(1, -1, 1, 1))),
    lambda: Then(ByKeyword)])
def test_shifts_the_unit_meets_before_the_next_conv_are_refused(tmp_path, model):
    """A shift after the unit's BatchNorm, a hand-written LayerNorm, a depthwise conv (numpy groups) with a
    BatchNorm or a bias after it, a shift read by a TorchScript module (no op of it is traced), a GroupNorm called
    by keyword: each gives a pruned unit a value the next conv sees (measured by the second review)."""
    assert "unit 'conv1': the output of 'conv1' goes" in refused(tmp_path, model, "conv1")


def test_a_batchnorm_subclass_adding_its_own_shift_is_refused(tmp_path):
    class WithPlus(Then):
        def __init__(self) -> None:
            super().__init__(lambda: nn.Identity())
            self.bn1 = BatchNormPlus(8)

    assert "goes through parameter 'bn1.extra', a learned shift" in refused(
        tmp_path, WithPlus, "conv1", units=[PrunableUnit("conv1", "conv1", bn="bn1")])


def test_a_copy_between_channels_of_one_tensor_moves_them(tmp_path):
    def swap(t):
        t[:, :4].copy_(t[:, 4:].clone())
        return t

    assert "with its channels moved or merged" in refused(tmp_path, lambda: Rearranged(swap), "conv1")


def test_a_separable_conv_without_bias_or_norm_in_between_is_accepted(tmp_path):
    """Xception: depthwise (no bias) straight into the pointwise conv keeps a pruned unit's channel at zero."""
    summary = api.run(config("conv1"), tmp_path / "run", model=lambda: Then(_depthwise(8, bias=False, norm=False)),
                      data=data())
    assert summary["status"] == "finished" and summary["n_events"] == 2


class TwoLayers(Head):
    """conv_a and conv_b concatenated, then a learned bias: conv_a's channels are its own there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bias, self.pw, self.head = nn.Parameter(torch.full((8,), 0.5)), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.cat([F.relu(self.bn_a(self.conv_a(x))), F.relu(self.bn_b(self.conv_b(x)))], 1)
        return self.head_of(self.pw(h + self.bias.view(1, -1, 1, 1)))


@pytest.mark.parametrize("model", [
    lambda: Then(lambda: nn.Sequential(nn.Conv2d(8, 8, (1, 3), padding=(0, 1), groups=8, bias=False),
                                       nn.Conv2d(8, 8, (3, 1), padding=(1, 0), groups=8, bias=False),
                                       nn.BatchNorm2d(8))),  # two depthwise convs, then a BatchNorm
    lambda: Then(lambda: lambda self, h: F.group_norm(F.conv2d(h, torch.ones(8, 1, 3, 3), padding=1, groups=8), 2)),
    lambda: Then(lambda: nn.Sequential(nn.ConvTranspose2d(8, 8, 3, padding=1, groups=8, bias=False),
                                       nn.BatchNorm2d(8))),
    lambda: Then(lambda: lambda self, h: h - h.mean(1, keepdim=True))])  # a statistic over the units
def test_depthwise_chains_and_statistics_over_units_are_refused(tmp_path, model):
    assert "unit 'conv1': the output of 'conv1' goes through" in refused(tmp_path, model, "conv1")


def test_a_shift_after_a_concatenation_reaches_each_layer(tmp_path):
    assert "the output of 'conv_a' goes through parameter 'bias', a learned shift" in refused(
        tmp_path, TwoLayers, "conv_a")


@pytest.mark.parametrize("model, layer, shape", [
    (lambda: TokenMLP(post=True), "fc2", (8, 8)), (lambda: ShiftThenBatchNorm(buffered=True), "conv1", (1, 8, 8)),
    (lambda: nn.Sequential(nn.Flatten(), nn.Unflatten(1, (8, 8)), nn.Linear(8, 16),
                           nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), nn.Flatten(), nn.Linear(128, 4)),
     "3.linear2", (8, 8))])
def test_post_norm_transformers_and_buffered_shifts_before_the_units_batchnorm_are_accepted(
        tmp_path, model, layer, shape):
    """The LayerNorm's other input is a LayerNorm's output on the same features (the residual: the channel lives
    on); a shift written into a buffer reaches the unit's own BatchNorm, which zeroes the pruned units."""
    summary = api.run(config(layer), tmp_path / "run", model=model, data=data(shape))
    assert summary["status"] == "finished" and summary["n_events"] == 2


class AttentionOverUnits(nn.Module):
    """A gate: softmax over a Linear's units, used to weight features (the units compete in the softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.head = nn.Linear(64, 8), nn.Linear(64, 4)

    def forward(self, x):
        h = x.flatten(1)
        weights = torch.softmax(self.gate(h), dim=1)
        return self.head(h * weights.repeat(1, 8))


class SkipIntoLogits(nn.Module):
    """Logits = head(h) + a second head's output: a pruned unit of one lives on in the sum, as removing it."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.aux = nn.Linear(64, 16), nn.Linear(16, 4), nn.Linear(64, 4)

    def forward(self, x):
        h = x.flatten(1)
        return self.head(F.relu(self.body(h))) + self.aux(h)


def test_a_layer_whose_units_compete_in_a_softmax_or_are_the_logits_is_refused(tmp_path):
    """Pruning the classifier pruned classes whose logit 0 was still predicted (an audit, 2026-12-07: a pruned
    class predicted for 46 of 64 test inputs)."""
    allowed = "allowed: a layer whose units a later layer reads"
    assert refused(tmp_path, Tied, "head") == (
        "unit 'head': the output of 'head' is the model's output (its units are the class logits), where a pruned "
        f"unit's 0 would still count (a share of a softmax, a place in a max or sort, a term of a mean; a removed one "
        f"would not); {allowed}")
    assert refused(tmp_path, AttentionOverUnits, "gate").startswith(
        "unit 'gate': the output of 'gate' goes into a softmax over its units, where a pruned unit's 0")
    summary = api.run(config("body", "head"), tmp_path / "skip", model=SkipIntoLogits, data=data())
    assert summary["status"] == "finished"  # 'head' summed with 'aux' into the logits: each class lives on


class Ranked(nn.Module):
    """A Linear's units ranked: ``how`` takes a max, sort or quantile of them (``view`` first: a maxout's groups)."""

    def __init__(self, how, width: int = 8) -> None:
        super().__init__()
        self.how, self.f1, self.head = how, nn.Linear(64, 8), nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.how(self.f1(x.flatten(1))))


@pytest.mark.parametrize(("how", "width", "op"), [
    (lambda h: h.view(-1, 4, 2).amax(-1), 4, "amax"),  # maxout: a pruned piece's 0 beats negative ones
    (lambda h: h * h.max(1, keepdim=True).values, 8, "max"),
    (lambda h: torch.cat([h, h.logsumexp(1, keepdim=True).expand(-1, 7)], 1)[:, :8], 8, "logsumexp"),
    (lambda h: h.sort(1).values, 8, "sort"),
    (lambda h: h.topk(2, dim=1).values.repeat(1, 4), 8, "topk"),
    (lambda h: h.amin((0, 1), keepdim=True) * h, 8, "amin"),
    (lambda h: h * h.mean(1, keepdim=True), 8, "mean"),  # CBAM's channel mean: a removed unit leaves the divisor
    (lambda h: h * h.var(True), 8, "var"),  # the old positional unbiased: every dimension
    (lambda h: h * h.prod(dim=1, keepdim=True), 8, "prod"),
])
def test_a_layer_whose_units_are_ranked_or_averaged_is_refused(tmp_path, how, width, op):
    """A max, sort, mean or product over a layer's units counts a pruned unit's 0, which removing it would not
    (an audit, 2026-12-07: maxout and a channel max were accepted, masked and removed models disagreed)."""
    assert refused(tmp_path, lambda: Ranked(how, width), "f1").startswith(
        f"unit 'f1': the output of 'f1' goes into a {op} over its units, where a pruned unit's 0 would still count")


def test_a_max_over_other_dimensions_or_elementwise_is_accepted(tmp_path):
    """A max over points (PointNet), a mean over them or two tensors' element-wise max does not reduce a layer's
    units; a sum or a norm over them would count a 0 as removing it does."""
    class PointMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f1, self.head = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):  # (N, 1, 8, 8) as 8 points of 8 features
            h = F.relu(self.f1(x.flatten(1, 2)))
            both = torch.maximum(h, torch.zeros_like(h)).amax(1) + torch.max(h, h).mean(1)
            return self.head(both * h.sum(2).norm(dim=1, keepdim=True) / h.norm(dim=2).sum(1, keepdim=True))

    summary = api.run(config("f1"), tmp_path / "run", model=PointMax, data=data())
    assert summary["status"] == "finished" and summary["n_events"] == 2


class Merged(nn.Module):
    """A conv's channels merged with its positions by a flatten (N, C·H·W) before ``how`` takes them."""

    def __init__(self, how, width: int = 36) -> None:
        super().__init__()
        self.how, self.conv, self.head = how, nn.Conv2d(1, 4, 3, stride=2), nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.how(F.relu(self.conv(x))))


@pytest.mark.parametrize(("how", "op"), [
    (lambda h: h.flatten(1) * h.flatten(1).mean(1, keepdim=True), "mean"),  # divides by C·H·W, pruned or not
    (lambda h: F.softmax(h.flatten(1), 1), "softmax"),  # a pruned channel's 0s keep their shares
    (lambda h: h.flatten(0, 1).amax(0, keepdim=True).expand(len(h) * 4, -1, -1).reshape(len(h), -1), "amax"),
])
def test_units_merged_with_other_dimensions_by_a_flatten_are_still_followed_into_a_reduction(tmp_path, how, op):
    """Until 2026-12-07 a mean or softmax over a flatten of (N, C, H, W) was accepted: the units were looked for
    as a dimension of their own, and a merged one was taken for none of theirs."""
    assert refused(tmp_path, lambda: Merged(how), "conv").startswith(
        f"unit 'conv': the output of 'conv' goes into a {op} over its units, where a pruned unit's 0 would still count")


def varying_dims(shape: tuple[int, ...], original: tuple[int, ...], dim: int) -> set[int]:
    """Brute force: the dimensions of ``shape`` (a view of ``original``) along which the index on ``original``'s
    dimension ``dim`` changes."""
    unit = torch.arange(math.prod(original)).reshape(original).div(math.prod(original[dim + 1:]),
                                                                   rounding_mode="floor") % original[dim]
    unit = unit.reshape(shape)
    return {d for d in range(len(shape)) if (unit != unit.narrow(d, 0, 1)).any()}


@pytest.mark.parametrize(("original", "dim", "shape"), [
    ((2, 4, 3, 3), 1, (2, 36)), ((2, 4, 3, 3), 1, (8, 3, 3)), ((2, 4, 3, 3), 1, (2, 4, 9)),
    ((2, 8), 1, (2, 4, 2)), ((2, 8), 1, (2, 2, 2, 2)), ((2, 8, 8), 2, (2, 64)), ((2, 8, 8), 2, (16, 8)),
    ((3, 6, 4), 1, (3, 2, 12)), ((3, 6, 4), 1, (72,)), ((2, 4, 3, 3), 1, (2, 4, 3, 3)),
])
def test_dims_holding_finds_a_layers_units_split_or_merged_by_a_view(original, dim, shape):
    """Against brute force: the dimensions along which the unit index changes."""
    layout = units_at(original, dim)
    assert dims_holding(shape, layout) == varying_dims(shape, original, dim)


def test_dims_holding_counts_an_unaligned_view_as_holding_the_units():
    """A view that cuts the units' digits unaligned ((6 units, 4 after) as (…, 8, 3)) is conservatively holding them
    wherever brute force says so, and possibly more."""
    for shape in [(3, 8, 3), (9, 8), (3, 3, 8), (4, 18)]:
        assert varying_dims(shape, (3, 6, 4), 1) <= dims_holding(shape, units_at((3, 6, 4), 1))


def test_a_reduction_over_positions_only_is_accepted_after_a_flatten(tmp_path):
    """Global average pooling by a flatten of the positions (N, C, H·W).mean(2) does not reduce the channels."""
    summary = api.run(config("conv"), tmp_path / "run", model=lambda: Merged(lambda h: h.flatten(2).mean(2), 4),
                      data=data())
    assert summary["status"] == "finished" and summary["n_events"] == 2


class Recurrent(nn.Module):
    """A Linear into an LSTM, GRU or RNN whose hidden size equals its input size, then a BatchNorm1d: the
    recurrent layer mixes the Linear's units, so the BatchNorm is not the Linear's."""

    def __init__(self, kind) -> None:
        super().__init__()
        self.f1, self.rnn, self.bn, self.head = nn.Linear(8, 16), kind(16, 16, batch_first=True), nn.BatchNorm1d(16), \
            nn.Linear(16, 4)

    def forward(self, x):  # (N, 1, 8, 8) as 8 steps of 8 features
        h, _ = self.rnn(F.relu(self.f1(x.squeeze(1))))
        return self.head(F.relu(self.bn(h[:, -1])))


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_recurrent_layer_ends_a_layers_lineage(tmp_path, kind):
    """Until 2026-12-07 the BatchNorm after the LSTM was paired with the Linear before it: pruning the Linear
    zeroed that BatchNorm's channels, killing live LSTM units, and the right declaration was refused (an audit)."""
    op = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn_tanh"}[kind]
    assert refused(tmp_path, lambda: Recurrent(kind), "f1") == (
        f"unit 'f1': the forward pass applies 'bn' to the output of '<{op}, which mixes channels>', but it is "
        "paired with 'bn' by module declaration order; declare "
        "PrunableUnit('f1', 'f1', bn=None) (gstlab.api.run units=, or the model's prunable_units())")
    torch.manual_seed(0)
    out = tmp_path / "declared"
    summary = api.run(config("f1"), out, model=lambda: Recurrent(kind), data=data(), units=[PrunableUnit("f1", "f1")])
    assert summary["status"] == "finished" and summary["n_events"] == 2
    model = api.load_model(out, lambda: Recurrent(kind))
    assert model.bn.weight.abs().min() > 0  # no BatchNorm channel was pruned with f1
    assert (model.f1.weight.abs().sum(1) == 0).sum() == 8  # half of f1's 16 units pruned


class AuxiliaryHead(nn.Module):
    """Inception style: a tuple (logits, auxiliary logits) in train mode, logits in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.head, self.aux = nn.Linear(64, 8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        h = F.relu(self.f1(x.flatten(1)))
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


def test_a_model_whose_train_mode_output_is_not_logits_is_refused_before_anything_is_written(tmp_path):
    """It failed in the loss with a traceback, leaving a run directory marked running (an audit, 2026-12-07)."""
    assert refused(tmp_path, AuxiliaryHead, "f1") == (
        "model: in train mode 2 inputs give a tuple (in eval mode, logits); the loss needs (batch, 4) logits in both "
        "modes; allowed: a forward that returns the logits in train mode too (no auxiliary outputs)")


def test_the_train_mode_check_changes_nothing(tmp_path):
    """The check runs the model in eval and in train mode once: BatchNorm statistics, every buffer and the random
    stream are restored, so a run's numbers are those of the run without it (until 2026-12-07 buffers outside the
    state dict, and what the eval pass changed, were not)."""
    from gstlab import dataflow

    class Dropped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f1, self.bn, self.drop, self.head = nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), \
                nn.Linear(8, 4)
            self.register_buffer("calls", torch.zeros(()), persistent=False)  # outside the state dict
            self.register_buffer("last", torch.zeros(8), persistent=False)
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            h = self.f1(x.flatten(1))
            self.seen = self.seen + len(x)  # in eval mode too, replaced
            if self.training:
                self.calls += 1  # in place
                self.last = h.detach().mean(0)  # replaced
            return self.head(self.drop(F.relu(self.bn(F.dropout(h, 0.1, training=True)))))  # MC dropout: always

    torch.manual_seed(0)
    model = Dropped()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = dict(model.named_buffers())
    x = data()[0][:2]
    rng = torch.get_rng_state()
    dataflow.trace(model, x, 4)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.calls is buffers["calls"] and model.calls == 0 and model.seen is buffers["seen"] and model.seen == 0
    assert model.last is buffers["last"] and not model.last.any()


class TwoConvs(Head):
    """conv1 -> bn1 -> relu -> conv2 -> bn2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head_of(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def test_two_units_of_one_name_are_refused(tmp_path):
    """The last unit of a name took the mask, the first was never pruned (an audit, 2026-12-07)."""
    units = [PrunableUnit("a", "conv1", bn="bn1"), PrunableUnit("a", "conv2", bn="bn2")]
    assert refused(tmp_path, TwoConvs, "a", units=units) == (
        "units[1] (a): name 'a' is another unit's too; masks, schedules and records are keyed by name, so allowed: "
        "a name per unit")


def test_units_given_as_a_generator_are_used_whole(tmp_path):
    """A generator was used up by the run id's fingerprint, and the run then saw no units (an audit)."""
    summary = api.run(config("conv1"), tmp_path / "run", model=TwoConvs, data=data(),
                      units=(u for u in ["conv1", "conv2"]))
    assert summary["status"] == "finished" and summary["n_events"] == 2
    assert refused(tmp_path / "empty", TwoConvs, "conv1", units=[]) == (
        "pruning.layers[0].name: unknown layer 'conv1'; the model declares no prunable units (e.g. units=[] given "
        "to gstlab.api.run), so allowed: no pruning.layers")


class SpareBatchNorm(Head):
    """conv1 with a BatchNorm that ``use`` says when to apply: never, in training only, or through F.batch_norm
    (always, or in training only)."""

    def __init__(self, use: str) -> None:
        super().__init__()
        self.use, self.conv1, self.bn1, self.head = use, nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), \
            nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv1(x)
        if self.use == "functional" or self.use == "functional in training" and self.training:
            h = F.batch_norm(h, self.bn1.running_mean, self.bn1.running_var, self.bn1.weight, self.bn1.bias,
                             self.training)
        elif self.use == "training" and self.training:
            h = self.bn1(h)
        return self.head_of(h)


def test_a_batchnorm_that_never_runs_is_not_a_units(tmp_path):
    """It was paired by declaration order: E[BN] then scored every unit by the untrained BatchNorm's constant and
    pruned them in index order (an audit, 2026-12-07). One that runs in training only, or whose parameters are
    used through F.batch_norm, is the unit's (through F.batch_norm in training only: refused until 2026-12-07)."""
    assert refused(tmp_path, lambda: SpareBatchNorm("never"), "conv1", criterion="ebn") == (
        "unit 'conv1': BatchNorm 'bn1', paired with it, never runs (in eval or train mode) and no op reads its "
        "parameters, so it is not the unit's (its scores, e.g. E[BN], would be an untrained BatchNorm's); declare "
        "PrunableUnit('conv1', 'conv1', bn=None)")
    summary = api.run(config("conv1"), tmp_path / "none", model=lambda: SpareBatchNorm("never"), data=data(),
                      units=[PrunableUnit("conv1", "conv1")])
    assert summary["status"] == "finished"
    for use in ("training", "functional", "functional in training"):
        summary = api.run(config("conv1", criterion="ebn"), tmp_path / use, model=lambda u=use: SpareBatchNorm(u),
                          data=data())
        assert summary["status"] == "finished" and summary["n_events"] == 2


class TokenRMSNorm(nn.Module):
    """A Linear on (N, P, D) into an RMSNorm over its features, as a Llama MLP's input: the norm's statistic
    counts a pruned unit's 0, which a removed unit would not (``functional``: F.rms_norm)."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional, self.f1, self.norm, self.head = functional, nn.Linear(8, 8), nn.RMSNorm(8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.f1(x.flatten(1, 2))
        h = F.rms_norm(h, (8,), self.norm.weight) if self.functional else self.norm(h)
        return self.head(h.mean(1))


def test_a_layer_into_an_rmsnorm_is_refused_as_into_a_layernorm(tmp_path):
    """RMSNorm was not a known op: it was taken to act per element, and accepted (found 2026-12-07)."""
    assert refused(tmp_path, lambda: TokenRMSNorm(False), "f1") == (
        "unit 'f1': the output of 'f1' goes into RMSNorm 'norm', which would give a pruned unit a non-zero output (a "
        "shift, or statistics over other units); allowed after a pruned layer: BatchNorm, InstanceNorm without affine "
        "or running statistics, or none")
    assert "F.rms_norm, whose statistics" in refused(tmp_path, lambda: TokenRMSNorm(True), "f1")
