"""CPU speed-ups that must not change a number: the evaluation max-pool and the foreach optimizer update are
bit-identical to PyTorch's defaults (issue 25)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gstlab import config as C
from gstlab.models.vgg import MaxPool2d
from gstlab.runner import build_optimizer


@pytest.mark.parametrize("shape", [(64, 8, 16, 16), (5, 3, 6, 4), (3, 128, 2, 2)])
def test_evaluation_max_pool_is_bit_identical_with_ties_and_nan(shape):
    torch.manual_seed(0)
    ties = torch.randint(-2, 3, shape).float().relu()  # many equal maxima and all-zero windows
    spread = torch.randn(shape).relu()
    spread.view(-1)[::97] = float("nan")
    for x in (ties, spread):
        with torch.no_grad():
            fast = MaxPool2d(2, 2)(x)
        plain = F.max_pool2d(x, 2, 2)
        assert torch.equal(fast.nan_to_num(-1.0), plain.nan_to_num(-1.0))
        assert fast.isnan().equal(plain.isnan()) and fast.stride() == plain.stride()


def test_max_pool_takes_pytorchs_kernel_for_training_and_other_windows():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    for pool in (MaxPool2d(2, 2), MaxPool2d(3, 2), MaxPool2d(2, 2, ceil_mode=True)):
        ref = nn.MaxPool2d(pool.kernel_size, pool.stride, ceil_mode=pool.ceil_mode)
        out = pool(x)
        assert out.grad_fn is not None and "MaxPool2DWithIndices" in type(out.grad_fn).__name__
        assert torch.equal(out, ref(x))
    with torch.no_grad():  # odd sides: PyTorch's kernel drops the last row and column
        assert torch.equal(MaxPool2d(2, 2)(x[..., :5, :5]), F.max_pool2d(x[..., :5, :5], 2, 2))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_foreach_update_on_cpu_is_bit_identical_to_the_per_tensor_loop(name):
    cfg = C.OptimConfig(name=name, lr=0.05, momentum=0.9, weight_decay=5e-4)
    models = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
        opt = build_optimizer(cfg, model)
        assert opt.param_groups[0]["foreach"] is True
        opt.param_groups[0]["foreach"] = foreach
        torch.manual_seed(1)
        for _ in range(5):
            loss = F.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        models.append(model)
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
