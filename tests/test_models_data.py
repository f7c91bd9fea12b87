"""Models (paper parameter counts, dead residual channels) and data (parsers, loader, missing-data messages)."""

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gstlab.config import DataConfig, ModelConfig
from gstlab.data import BUILT_IN, DataMissingError, Images, TrainLoader, augment_batch, cifar, fashion_mnist, load_data
from gstlab.data.download import md5sum, verify
from gstlab.models import build_model
from gstlab.pruning.masks import UnitMasks


@pytest.mark.parametrize("arch, classes, params", [
    ("vgg11_bn", 10, 9_231_114), ("resnet18", 10, 11_173_962), ("resnet18", 100, 11_220_132),
    ("resnet20", 10, 269_722), ("resnet56", 10, 853_018),
])
def test_parameter_counts_match_the_paper_models(arch, classes, params):
    model = build_model(ModelConfig(arch=arch), (3, 32, 32), classes)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("arch, unit", [("resnet18", "layer2.0.conv2"), ("resnet20", "layer1.1.conv2")])
def test_pruned_conv2_channel_is_dead_including_its_shortcut(arch, unit):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=0.25), (3, 32, 32), 10).eval()
    block = model.get_submodule(unit.rsplit(".", 1)[0])
    masks = UnitMasks(model, model.prunable_units())
    masks.prune(unit, torch.tensor([0, 2]))
    seen = {}
    block.residual_out.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model(torch.randn(4, 3, 32, 32))
    assert seen["out"][:, [0, 2]].abs().max() == 0  # post-addition, pre-ReLU: nothing leaks via the shortcut
    assert seen["out"][:, 1].abs().max() > 0


def test_build_model_rejects_inputs_the_conv_nets_cannot_take():
    with pytest.raises(Exception, match="32"):
        build_model(ModelConfig(arch="vgg11_bn"), (1, 28, 28), 10)


# ---------------------------------------------------------------------------------------------------- data


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def vouch_for(monkeypatch, root) -> None:
    """Let the fake IDX files in ``root`` stand in for the official ones (their content's SHA-256)."""
    for name in fashion_mnist.CONTENT:
        digest = hashlib.sha256(fashion_mnist.idx_bytes(root / name)).hexdigest()
        monkeypatch.setitem(fashion_mnist.CONTENT, name, digest)


def fake_fashion(tmp_path, monkeypatch, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test)}
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
    vouch_for(monkeypatch, tmp_path)
    return arrays


def test_idx_parser_and_fashion_mnist_layout(tmp_path, monkeypatch):
    arrays = fake_fashion(tmp_path, monkeypatch)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "train-images-idx3-ubyte.gz"),
                          arrays["train-images-idx3-ubyte.gz"])
    images, y, xt, yt = fashion_mnist.load(str(tmp_path), download_ok=False, normalize=False)
    assert images.raw.dtype == torch.uint8 and images.raw.shape == (20, 1, 28, 28)  # stored as on disk
    assert images.shape == (20, 1, 32, 32) and xt.shape == (10, 1, 32, 32)
    x = images[:]
    assert torch.equal(x[:, 0, 2:30, 2:30] * 255, torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]).float())
    assert x[:, :, :2].abs().max() == 0  # zero padding to 32x32
    assert y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()


def test_per_batch_decoding_equals_normalizing_the_whole_set_first(tmp_path, monkeypatch):
    arrays = fake_fashion(tmp_path, monkeypatch)
    images = fashion_mnist.load(str(tmp_path), download_ok=False, normalize=True)[0]
    whole = (torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]).float() / 255 - fashion_mnist.MEAN) \
        / fashion_mnist.STD  # the former pipeline: the whole set in float32, then padded
    whole = torch.nn.functional.pad(whole.unsqueeze(1), (2, 2, 2, 2))
    idx = torch.tensor([7, 0, 19])
    assert torch.equal(images[idx], whole[idx]) and torch.equal(images[3:5], whole[3:5])
    assert images.fill().tolist() == [pytest.approx(-fashion_mnist.MEAN / fashion_mnist.STD)]


def test_crop_pads_black_pixels_before_normalization():
    raw = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    images = Images(raw, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert torch.equal(images.fill(), torch.tensor([-1.0, -1.0, 0.0]))
    loader = TrainLoader(images, torch.arange(2), 2, augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loader.fill, images.fill())
    out = augment_batch(images[:], torch.tensor([[0, 0], [4, 4]]), torch.tensor([False, False]), 2, loader.fill)
    assert torch.equal(out[0, :, :2, :2], torch.tensor([-1.0, -1.0, 0.0]).view(3, 1, 1).expand(3, 2, 2))
    assert torch.equal(out[0, :, 2:, 2:], images[:1][0, :, :2, :2])  # the image itself: (1 - mean) / std
    assert torch.equal(out[1, :, 2:, 2:], torch.tensor([-1.0, -1.0, 0.0]).view(3, 1, 1).expand(3, 2, 2))


def test_fashion_mnist_that_is_not_the_official_content_is_refused(tmp_path, monkeypatch):
    """data.root is not part of the run id: a cut or replaced copy would pass as Fashion-MNIST under its id."""
    fake_fashion(tmp_path, monkeypatch)
    monkeypatch.undo()  # the official digests again
    with pytest.raises(DataMissingError, match="train-images-idx3-ubyte.gz: not the official Fashion-MNIST file"):
        fashion_mnist.load(str(tmp_path), download_ok=False, normalize=True)
    if fashion_mnist.DEBIAN_DIR.exists():  # the offline default: Debian's recompressed files have the content
        assert len(fashion_mnist.load(None, download_ok=False, normalize=True)[1]) == 60_000


def test_corrupt_idx_file_is_rejected(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(ValueError, match="IDX"):
        fashion_mnist.read_idx(tmp_path / "bad.gz")


def test_cifar_archive_is_read_from_a_tarball(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    data, sums = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data[name] = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
        (src / name).write_bytes(pickle.dumps(data[name]))
        sums[name] = md5sum(src / name)
    monkeypatch.setitem(cifar.SPECS["cifar10"], "files", sums)  # these fake batches stand in for the official
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    monkeypatch.setitem(cifar.SPECS["cifar10"], "md5", md5sum(tmp_path / "cifar-10-python.tar.gz"))  # and archive
    x, y, xt, yt = cifar.load("cifar10", str(tmp_path), download_ok=False, normalize=False)
    assert x.shape == (20, 3, 32, 32) and xt.shape == (4, 3, 32, 32)
    first = torch.from_numpy(data["data_batch_1"][b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x[0], first) and yt.tolist() == data["test_batch"][b"labels"]
    extracted = tmp_path / "cifar-10-batches-py"
    (extracted / "data_batch_3").unlink()  # an incomplete extraction beside the archive: extracted again
    assert torch.equal(cifar.load("cifar10", str(tmp_path), download_ok=False, normalize=False)[0][:], x[:])
    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # a Python without extraction filters
    (extracted / "data_batch_3").unlink()
    assert torch.equal(cifar.load("cifar10", str(tmp_path), download_ok=False, normalize=False)[0][:], x[:])
    (extracted / "data_batch_3").unlink()
    (tmp_path / "cifar-10-python.tar.gz").unlink()  # and without its archive: named, not an OSError
    with pytest.raises(DataMissingError, match="cifar-10-batches-py lacks batch files: delete it"):
        cifar.load("cifar10", str(tmp_path), download_ok=False, normalize=False)


def test_a_corrupt_download_names_its_url_and_leaves_nothing(tmp_path, monkeypatch):
    from gstlab.data import download as D

    monkeypatch.setattr(D.urllib.request, "urlretrieve", lambda url, path: Path(path).write_bytes(b"junk"))
    with pytest.raises(DataMissingError, match=r"^https://x/a.tgz: checksum mismatch \(md5 [0-9a-f]{32}, "
                                               r"expected 0{32}\); the download was removed; retry"):
        D.download("https://x/a.tgz", tmp_path / "a.tgz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(str(tmp_path), download_ok=False, normalize=True)
    with pytest.raises(DataMissingError, match="cifar-10-python.tar.gz"):
        cifar.load("cifar10", str(tmp_path), download_ok=False, normalize=True)


def test_checksum_mismatch_is_an_error(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    verify(tmp_path / "f", "900150983cd24fb0d6963f7d28e17f72")  # md5("abc")
    with pytest.raises(Exception, match="md5|checksum"):
        verify(tmp_path / "f", "0" * 32)


def test_subset_is_seeded_and_loader_covers_every_example_once(tmp_path):
    cfg = DataConfig(name="synthetic", synthetic_train=50, synthetic_test=10, train_subset=30)
    a, b = load_data(cfg, seed=1), load_data(cfg, seed=1)
    assert torch.equal(a.x_train[:], b.x_train[:]) and len(a.x_train) == 30
    assert not torch.equal(a.x_train[:], load_data(cfg, seed=2).x_train[:])
    x = torch.arange(30.0).view(30, 1, 1, 1)
    loader = TrainLoader(x, torch.arange(30), 8, augment=False, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([xb.flatten() for xb, _ in loader])
    assert len(loader) == 4 and sorted(seen.tolist()) == list(range(30))


def test_loader_order_resumes_from_generator_state():
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20)
    gen = torch.Generator().manual_seed(5)
    list(TrainLoader(x, y, 6, augment=True, generator=gen))
    state = gen.get_state()
    after = [yb for _, yb in TrainLoader(x, y, 6, augment=True, generator=gen)]
    gen.set_state(state)
    again = [yb for _, yb in TrainLoader(x, y, 6, augment=True, generator=gen)]
    assert all(torch.equal(p, q) for p, q in zip(after, again))


def test_augmentation_is_a_shifted_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    same = augment_batch(x, torch.tensor([[2, 2], [2, 2]]), torch.tensor([False, True]), padding=2)
    assert torch.equal(same[0], x[0]) and torch.equal(same[1], x[1].flip(2))
    shifted = augment_batch(x, torch.tensor([[0, 0], [4, 4]]), torch.tensor([False, False]), padding=2)
    assert torch.equal(shifted[0, 0, 2:, 2:], x[0, 0, :2, :2]) and shifted[0, 0, :2].abs().max() == 0
    assert torch.equal(shifted[1, 0, :2, :2], x[1, 0, 2:, 2:])


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist1d"])
def test_facts_known_without_loading_match_the_loaded_data(name):
    """preflight and the speed estimate use BUILT_IN instead of loading: its shape, classes and split sizes must
    be those of the tensors a run trains on (Fashion-MNIST: padded to 32x32)."""
    try:
        data = load_data(DataConfig(name=name), seed=0)
    except DataMissingError as err:  # Fashion-MNIST without dataset-fashion-mnist (CI installs it)
        pytest.skip(str(err))
    facts = BUILT_IN[name]
    assert tuple(data.x_train.shape[1:]) == tuple(data.x_test.shape[1:]) == facts.shape
    assert (data.num_classes, len(data.y_train), len(data.y_test)) == (facts.classes, facts.train, facts.test)


def test_normalization_constants_cached_under_inference_mode_are_ordinary_tensors():
    """The per-channel constants are cached per device: one made first under torch.inference_mode would be an
    inference tensor, which autograd refuses to save for backward in every later use."""
    from gstlab.data.tensor_data import _per_channel

    _per_channel.cache_clear()
    x = Images(torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8), mean=(0.1, 0.2), std=(0.3, 0.4))
    with torch.inference_mode():
        first = x[torch.arange(4)]
    assert not _per_channel((0.1, 0.2), torch.device("cpu"), 4).is_inference()
    scale = torch.ones(1, requires_grad=True)
    (x[torch.arange(4)] * scale).sum().backward()
    assert torch.equal(first, x[torch.arange(4)])


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18", "resnet20", "resnet56", "mlp"])
def test_one_forward_pass_links_every_zoo_unit_to_its_batchnorm(arch):
    """The BatchNorm pairing check judges on evidence: in every zoo model, each unit's BatchNorm is fed by its
    layer's output, so the check confirms every pairing rather than leaving one unjudged."""
    from gstlab import dataflow

    model = build_model(ModelConfig(arch=arch), (3, 32, 32), 10)
    flow = dataflow.trace(model, torch.randn(2, 3, 32, 32), 10)
    units = model.prunable_units()
    assert units and all(flow.fed_by[u.bn] == u.module for u in units)
    assert not any(u.module in layers for u in units for layers in flow.moved.values())
    dataflow.check_units(model, units, flow)
    dataflow.check_activations(model, units, flow)  # every zoo unit's activation module runs once and trains
