"""The mini scale's models and inputs: a VGG11 for 16x16 images with the paper's unit names, masks equal to
physically removed filters, exact 2x2 downsampling, and the crop padding kept in proportion."""

import pytest
import torch
from torch import nn

from gstlab.config import ConfigError, DataConfig, ModelConfig
from gstlab.data import Images, crop_padding, downsample, load_data
from gstlab.experiments.presets import MINI_VGG_CHANNELS
from gstlab.models import build_model
from gstlab.models.units import unit_count
from gstlab.pruning.masks import UnitMasks
from gstlab.pruning.scores import l2


def mini_vgg(channels=MINI_VGG_CHANNELS, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="vgg11_bn", channels=tuple(channels)), (1, 16, 16), 10)


def test_mini_vgg_keeps_the_papers_units_and_ends_at_1x1():
    model = mini_vgg()
    units = model.prunable_units()
    assert [u.name for u in units] == [f"conv{i}" for i in range(1, 9)]
    paper = build_model(ModelConfig(arch="vgg11_bn"), (3, 32, 32), 10).prunable_units()
    assert [(u.module, u.bn) for u in units] == [(u.module, u.bn) for u in paper]  # features.15/18/22/25 ...
    assert [unit_count(model, u) for u in units] == MINI_VGG_CHANNELS
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    assert model.features(torch.randn(2, 1, 16, 16)).shape == (2, 128, 1, 1)
    tiny = build_model(ModelConfig(arch="vgg11_bn", width=0.25), (1, 8, 8), 10)
    assert tiny(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vgg_pools_choose_where_the_map_shrinks():
    """Pools 1, 2, 3, 5 at 16x16: conv5-6 at 2x2 and conv7-8 at 2x2 (as the paper's conv7-8), then 1x1."""
    model = build_model(ModelConfig(arch="vgg11_bn", channels=tuple(MINI_VGG_CHANNELS), vgg_pools=(1, 2, 3, 5)),
                        (1, 16, 16), 10)
    sizes, x = {}, torch.randn(2, 1, 16, 16)
    for i, m in enumerate(model.features):
        x = m(x)
        if isinstance(m, nn.Conv2d):
            sizes[f"features.{i}"] = x.shape[-1]
    assert [sizes[u.module] for u in model.prunable_units()] == [16, 8, 4, 4, 2, 2, 2, 2]
    assert x.shape == (2, 128, 1, 1) and model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.vgg_pools"):
        build_model(ModelConfig(arch="vgg11_bn", vgg_pools=(1, 2, 3)), (1, 16, 16), 10)


def test_build_model_names_the_sizes_it_takes():
    with pytest.raises(ConfigError, match="16x16"):
        build_model(ModelConfig(arch="vgg11_bn"), (1, 12, 12), 10)
    with pytest.raises(ConfigError, match="32x32, 16x16"):
        build_model(ModelConfig(arch="resnet18"), (1, 8, 8), 10)


def _copy_layer(dst_conv, dst_bn, src_conv, src_bn, rows, cols):
    dst_conv.weight.copy_(src_conv.weight[rows][:, cols])
    dst_conv.bias.copy_(src_conv.bias[rows])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst_bn, name).copy_(getattr(src_bn, name)[rows])


@pytest.mark.parametrize("train_mode", [False, True])
def test_masked_mini_vgg_equals_the_vgg_with_those_filters_removed(train_mode):
    net = mini_vgg()
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
    masks = UnitMasks(net, net.prunable_units())
    pruned = {"conv5": [1, 2, 90], "conv8": [0, 5, 7, 127]}
    for name, idx in pruned.items():
        masks.prune(name, torch.tensor(idx))
    keep = {f"conv{i}": [c for c in range(n) if c not in pruned.get(f"conv{i}", [])]
            for i, n in enumerate(MINI_VGG_CHANNELS, start=1)}
    small = mini_vgg([len(keep[f"conv{i}"]) for i in range(1, 9)], seed=1)
    convs = [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        previous = [0]
        for k, i in enumerate(convs, start=1):
            rows = keep[f"conv{k}"]
            _copy_layer(small.features[i], small.features[i + 1], net.features[i], net.features[i + 1], rows, previous)
            previous = rows
        small.classifier.weight.copy_(net.classifier.weight[:, previous])
        small.classifier.bias.copy_(net.classifier.bias)
    net.train(train_mode)
    small.train(train_mode)
    x = torch.randn(12, 1, 16, 16)
    torch.testing.assert_close(net(x), small(x), rtol=1e-4, atol=1e-5)


def test_l2_scores_of_the_mini_vgg_are_filter_norms():
    net = mini_vgg()
    conv8 = net.get_submodule(net.prunable_units()[7].module)
    expected = conv8.weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(l2(conv8.weight.detach()), expected)


def test_downsample_averages_2x2_blocks_exactly():
    x = Images(torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4))
    out = downsample(x, 2)[:]  # decoded per batch
    assert out.shape == (2, 1, 2, 2)
    assert out[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4 and out[1, 0, 1, 1] == (26 + 27 + 30 + 31) / 4
    assert downsample(x, 4) is x
    with pytest.raises(ConfigError, match="data.image_size"):
        downsample(x, 3)


def test_fashion_mnist_at_16x16_is_the_28x28_image_at_14x14_with_one_pixel_of_padding():
    data = load_data(DataConfig(name="fashion_mnist", image_size=16, train_subset=64, test_subset=32), seed=0)
    full = load_data(DataConfig(name="fashion_mnist", train_subset=64, test_subset=32), seed=0)
    assert data.input_shape == (1, 16, 16) and len(data.x_train) == 64 and len(data.x_test) == 32
    inner = full.x_test[:][:, :, 2:30, 2:30]  # the 28x28 image (normalized) inside its zero padding
    small = data.x_test[:]
    torch.testing.assert_close(small[:, :, 1:15, 1:15], nn.functional.avg_pool2d(inner, 2))
    assert torch.all(small[:, :, 0] == 0) and torch.all(small[:, :, :, 15] == 0)
    # decoded once (as large as the uint8 28x28 pixels); crop padding is still a black pixel, normalized
    assert data.x_test.raw.dtype == torch.float32 and torch.equal(data.x_test.raw, small)
    assert torch.equal(data.x_train.fill(), full.x_train.fill()) and float(data.x_train.fill()) < -0.8


def test_crop_padding_keeps_its_share_of_the_image():
    assert crop_padding((3, 32, 32)) == 4 and crop_padding((1, 16, 16)) == 2 and crop_padding((1, 8, 8)) == 1
