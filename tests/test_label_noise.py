"""Label noise (data.label_noise): exactly round(p N) training labels replaced by a different class, chosen by
the data seed; the logged clean / noisy training accuracy is exact; p = 0 changes no run id."""

import csv
import math

import pytest
import torch
from torch import nn

from gstlab import config as C
from gstlab.analysis.summary import summarize
from gstlab.data import TrainLoader, load_data
from gstlab.data.label_noise import LabelNoise, corrupt_labels, split_accuracy
from gstlab.runner import execute
from gstlab.train import Trainer
from test_runner import TINY


def test_exactly_the_fraction_is_replaced_by_another_class_and_the_draw_follows_the_seed():
    y = torch.arange(1000) % 10
    given, noisy = corrupt_labels(y, 10, 0.37, seed=5)
    assert int(noisy.sum()) == 370
    assert bool((given[noisy] != y[noisy]).all()) and bool((given[~noisy] == y[~noisy]).all())
    assert given.min() >= 0 and given.max() <= 9
    again, _ = corrupt_labels(y, 10, 0.37, seed=5)
    other, _ = corrupt_labels(y, 10, 0.37, seed=6)
    assert torch.equal(given, again) and not torch.equal(given, other)


def test_the_wrong_label_is_uniform_over_the_other_classes():
    classes, n = 5, 50_000
    y = torch.zeros(n, dtype=torch.long)  # every clean label 0: the given labels must spread over 1..4
    given, noisy = corrupt_labels(y, classes, 0.8, seed=0)
    counts = torch.bincount(given[noisy], minlength=classes).tolist()
    assert counts[0] == 0
    expected = int(noisy.sum()) / (classes - 1)
    for c in counts[1:]:  # binomial sd ~ 87: 5 sd
        assert abs(c - expected) < 5 * math.sqrt(expected)


def test_one_class_cannot_be_made_noisy():
    with pytest.raises(C.ConfigError, match="data.label_noise"):
        corrupt_labels(torch.zeros(4, dtype=torch.long), 1, 0.5, seed=0)


def test_split_accuracy_is_exact():
    hits = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    noisy = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert split_accuracy(hits, noisy) == {"train_acc_clean": pytest.approx(200 / 3),
                                           "train_acc_noisy": pytest.approx(100 / 3)}
    assert math.isnan(split_accuracy(hits, torch.zeros(6, dtype=torch.bool))["train_acc_noisy"])


def _oracle_trainer(x, y, noise: LabelNoise):
    """A model that predicts the *clean* label of every example (x is its one-hot), trained with lr 0."""
    model = nn.Linear(x.shape[1], x.shape[1], bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(x.shape[1]))
    loader = TrainLoader(x, y, 7, augment=False, generator=torch.Generator().manual_seed(0), indexed=True)
    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), train_batches=loader,
                      eval_data=(x, y), eval_batch_size=16)
    trainer.train_hits = torch.zeros(len(y), dtype=torch.bool)
    return trainer


def test_logged_split_on_known_noise_indices_is_exact():
    clean = torch.arange(60) % 6
    given, noisy = corrupt_labels(clean, 6, 0.25, seed=3)
    noise = LabelNoise(noisy, clean, given)
    x = nn.functional.one_hot(clean, 6).float()
    trainer = _oracle_trainer(x, given, noise)
    train = trainer.train_epoch()
    # the oracle is right on every clean example and has memorized no noisy label
    assert noise.split(trainer.train_hits) == {"train_acc_clean": 100.0, "train_acc_noisy": 0.0}
    assert train.acc == pytest.approx(75.0)


def _noisy_cfg(p: float) -> C.RunConfig:
    return C.parse(TINY, [f"data.label_noise={p}", "pruning.layers=[]"])


def test_zero_noise_changes_no_run_id_and_writes_nothing_new(tmp_path):
    base = C.parse(TINY, ["pruning.layers=[]"])
    assert C.run_id(_noisy_cfg(0)) == C.run_id(base)
    assert C.run_id(_noisy_cfg(0.2)) != C.run_id(base)
    execute(_noisy_cfg(0), tmp_path / "run")
    assert not (tmp_path / "run" / "label_noise.csv").exists()
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train_acc_noisy" not in header


def test_a_noisy_run_records_its_noisy_examples_and_memorization(tmp_path):
    cfg = _noisy_cfg(0.25)
    summary = execute(cfg, tmp_path / "run")
    data = load_data(cfg.data, seed=_data_seed(cfg))
    with open(tmp_path / "run" / "label_noise.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == data.label_noise.noisy.nonzero().flatten().tolist()
    assert len(rows) == round(0.25 * len(data.y_train))
    assert all(r["label"] != r["given_label"] for r in rows)
    with open(tmp_path / "run" / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    n_noisy, n = len(rows), len(data.y_train)
    for row in metrics:  # the two groups make up the whole running accuracy
        mixed = ((n - n_noisy) * float(row["train_acc_clean"]) + n_noisy * float(row["train_acc_noisy"])) / n
        assert mixed == pytest.approx(float(row["train_acc"]), abs=1e-9)
    best = metrics[summary["best_epoch"]]
    assert summary["memorization"] == float(best["train_acc_noisy"])
    assert summary["peak_test_acc"] == max(float(r["test_acc"]) for r in metrics)


def test_a_noisy_run_without_its_manifest_is_verified_from_its_tables(tmp_path):
    """Without manifest.json a finished run is checked by structure; a label-noise run's metrics.csv has two
    more columns, and is still a finished run (not "damaged", which would redo it)."""
    from gstlab import recovery

    execute(_noisy_cfg(0.25), tmp_path / "run")
    (tmp_path / "run" / "manifest.json").unlink()
    summary, problem = recovery.verify_finished(tmp_path / "run")
    assert problem is None and summary["status"] == "finished"


def _data_seed(cfg: C.RunConfig) -> int:
    from gstlab.seeding import derive_seed

    return derive_seed(cfg.seed, "data")


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_label_noise_outside_zero_one_is_refused(value):
    with pytest.raises(C.ConfigError, match="data.label_noise: must be in \\[0, 1\\)"):
        _noisy_cfg(value)


def test_summary_peak_is_over_all_epochs_and_best_over_the_post_pruning_phase():
    metrics = [{"epoch": e, "test_acc": acc, "train_acc": 100.0, "train_acc_noisy": mem}
               for e, (acc, mem) in enumerate([(70, 10), (72, 20), (69, 90), (69.5, 95)])]
    events = [{"epoch": 2, "units_removed": 3, "acc_before": 70, "acc_after": 69}]
    s = summarize(metrics, events, scratch=False)
    assert (s["peak_test_acc"], s["peak_epoch"]) == (72.0, 1)
    assert (s["best_test_acc"], s["best_epoch"], s["memorization"]) == (69.5, 3, 95.0)


@pytest.mark.parametrize("dtype, classes", [(torch.int8, 100), (torch.uint8, 200)])
def test_narrow_label_dtypes_of_a_registered_data_set_get_the_same_noise(dtype, classes):
    """A registered data set may store labels as int8/uint8: label + shift would wrap around in that type."""
    from gstlab.registry import datasets

    y = torch.arange(4000) % classes
    x = torch.randn(4000, 2)

    def load(cfg):
        return (x, y.to(dtype), x[:10], y[:10].to(dtype)), classes

    datasets.register("narrow", load)
    try:
        data = load_data(C.parse({**TINY, "data": {"name": "narrow", "label_noise": 0.4}}).data, seed=3)
    finally:
        datasets.unregister("narrow")
    given, noisy = corrupt_labels(y, classes, 0.4, 3)  # the same draw on int64 labels
    assert torch.equal(data.y_train, given) and torch.equal(data.label_noise.noisy, noisy)
    assert bool((data.y_train[noisy] != y[noisy]).all())  # every recorded noisy label was changed


def test_the_synthetic_test_set_does_not_depend_on_the_training_set_size():
    from gstlab.data.generated import synthetic

    small, large = synthetic((1, 4, 4), 3, 64, 32), synthetic((1, 4, 4), 3, 128, 32)
    assert torch.equal(small[2], large[2]) and torch.equal(small[3], large[3])
