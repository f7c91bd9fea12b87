"""Masks: pruned units are exactly dead, stay dead through optimizers, and equal physical removal."""

import copy

import pytest
import torch
from torch import nn

from gstlab.models.units import units_from_names
from gstlab.pruning.masks import UnitMasks


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )


PRUNED = torch.tensor([1, 4, 6])


def pruned_net():
    net = tiny_net()
    masks = UnitMasks(net, units_from_names(net, ["0", "3"]))
    return net, masks


def test_units_from_names_finds_following_bn():
    net = tiny_net()
    units = units_from_names(net, ["0", "3"])
    assert [(u.module, u.bn) for u in units] == [("0", "1"), ("3", "4")]
    with pytest.raises(ValueError, match="only Conv1d/Conv2d/Linear"):
        units_from_names(net, ["1"])


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
], ids=["sgd-momentum-wd", "adam-wd", "adamw"])
def test_pruned_units_stay_exactly_zero_through_optimizer_steps(make_opt):
    net, masks = pruned_net()
    opt = make_opt(net.parameters())
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 4, (16,))
    for _ in range(5):  # build momentum / Adam moments before pruning
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    masks.prune("0", PRUNED, opt)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(16, 3, 6, 6)), y).backward()
        opt.step()
        masks.apply_()
    for t in (net[0].weight, net[0].bias, net[1].weight, net[1].bias):
        assert torch.all(t[PRUNED] == 0)
        assert torch.any(t[[0, 2, 3]] != 0)
    for state in opt.state[net[0].weight].values():
        if torch.is_tensor(state) and state.shape == net[0].weight.shape:
            assert torch.all(state[PRUNED] == 0)
    act = net[:3](torch.randn(4, 3, 6, 6))
    assert torch.all(act[:, PRUNED] == 0)


@pytest.mark.parametrize("train_mode", [False, True])
def test_masked_model_equals_physically_removed_units(train_mode):
    net, masks = pruned_net()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    masks.prune("0", PRUNED)
    keep = torch.tensor([i for i in range(8) if i not in PRUNED.tolist()])
    small = nn.Sequential(
        nn.Conv2d(3, len(keep), 3, padding=1), nn.BatchNorm2d(len(keep)), nn.ReLU(),
        nn.Conv2d(len(keep), 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )
    with torch.no_grad():
        small[0].weight.copy_(net[0].weight[keep])
        small[0].bias.copy_(net[0].bias[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(small[1], name).copy_(getattr(net[1], name)[keep])
        small[3].weight.copy_(net[3].weight[:, keep])
        small[3].bias.copy_(net[3].bias)
        small[4].load_state_dict(net[4].state_dict())
        small[8].load_state_dict(net[8].state_dict())
    net.train(train_mode)
    small.train(train_mode)
    x = torch.randn(10, 3, 6, 6)
    torch.testing.assert_close(net(x), small(x), rtol=1e-5, atol=1e-6)


def test_masks_are_buffers_saved_with_the_model():
    net, masks = pruned_net()
    masks.prune("0", PRUNED)
    state = net.state_dict()
    assert "0.unit_mask" in state and "3.unit_mask" in state
    fresh = tiny_net()
    fresh_masks = UnitMasks(fresh, units_from_names(fresh, ["0", "3"]))
    fresh.load_state_dict(copy.deepcopy(state))
    fresh_masks.refresh()
    assert fresh_masks.n_pruned("0") == 3 and fresh_masks.total_pruned() == 3


def test_parameter_counts_and_param_masks():
    net, masks = pruned_net()
    total = sum(p.numel() for p in net.parameters())
    assert masks.parameter_counts() == (total, total)
    masks.prune("0", PRUNED)
    per_unit = 3 * 9 + 1 + 2  # conv filter, bias, BN gamma and beta
    assert masks.parameter_counts() == (total, total - 3 * per_unit)
    pm = masks.param_masks()
    assert set(pm) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert pm["0.weight"].shape == net[0].weight.shape and not pm["0.weight"][PRUNED].any()


def test_bn_masking_off_leaves_bn_and_bias_alive():
    net = tiny_net()
    masks = UnitMasks(net, units_from_names(net, ["0"]), bn_masking=False)
    with torch.no_grad():
        net[1].bias.fill_(0.3)
    masks.prune("0", PRUNED)
    assert torch.all(net[0].weight[PRUNED] == 0)
    assert torch.all(net[1].bias[PRUNED] == 0.3)
    net.eval()
    act = net[:3](torch.randn(4, 3, 6, 6))
    assert torch.all(act[:, PRUNED] > 0)  # the paper's trap: the channel is not dead without BN masking
