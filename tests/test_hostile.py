"""Issue 24: the hostile probe's cases. Every bad input ends with exit 2 and one line naming the field, with
nothing written; every fault ends with exit 1 (or a repair and a warning) and one line, never a traceback;
nothing is silently wrong. docs/reliability.md lists the cases with their counts."""

import csv
import errno
import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gstlab import config as C
from gstlab import recovery, runner, store
from gstlab import study as S
from gstlab.cli import main
from gstlab.data import DataMissingError, cifar
from gstlab.runner import execute
from test_reliability import _Killed, _killed_after
from test_runner import TINY, _comparable, _write, cfg_of

# the YAML alias bomb ("billion laughs"): 9^8 strings from a few hundred bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
TINY_TEXT = yaml.safe_dump(TINY)
TRAIN_LINE = TINY_TEXT.splitlines().index("train:") + 1


def _one_line_exit(capsys, argv: list[str], code: int = 2) -> str:
    """``gst ARGV`` exits ``code`` with exactly one line on stderr (no traceback) and nothing on stdout (a banner
    printed before the error had made it more than one line); returns the line."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "", out
    return err


def _refused(tmp_path: Path, capsys, argv: list[str], field: str) -> None:
    out = tmp_path / "never"
    err = _one_line_exit(capsys, [*argv, "--out", str(out)])
    assert field in err, err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def _config(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return ["run", "--config", str(path), "--no-progress"]


# ------------------------------------------------------------------------------------- config files (YAML)


@pytest.mark.parametrize("text, field", [
    (BOMB, "expands to more than"),
    ("seed: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than"),
    (TINY_TEXT + "name: 2020-01-01\n", "name: a date"),
    (TINY_TEXT + "name: !!binary aGVsbG8=\n", "name: binary data"),
    (TINY_TEXT + "name: !!set {a, b}\n", "name: a set"),
    (TINY_TEXT.replace("epochs: 6", "epochs: 6\n  epochs: 600"), "duplicate key 'epochs'"),
    (TINY_TEXT.replace("train:\n", "train:\n  <<: {epochs: 600}\n"),
     f"train: merge keys (<<, line {TRAIN_LINE + 1}) are not supported; write the keys out"),
    (TINY_TEXT.replace("epochs: 6", "epochs: " + "9" * 5000),
     "train.epochs: an integer of 5,000 digits (line "),
], ids=["alias-bomb", "nested-50000", "date", "binary", "set", "duplicate-key", "merge-key", "5000-digits"])
def test_yaml_that_is_not_plain_bounded_data_is_refused(tmp_path, capsys, text, field):
    _refused(tmp_path, capsys, _config(tmp_path, text), field)


def test_a_config_that_never_ends_is_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, ["run", "--config", "/dev/zero"], "gst: error: config file /dev/zero: larger than "
                                                                  "1,048,576 bytes; a config is a short YAML")


# ------------------------------------------------------------------------------------- semantic validation


@pytest.mark.parametrize("override, field", [
    ("optim.gamma=-1", "optim.gamma: must be in (0, 1]"),
    ("optim.momentum=-0.5", "optim.momentum: must be in [0, 1)"),
    ("optim.milestones=[4,2,2]", "optim.milestones: must be strictly increasing"),
    ("optim.milestones=[60]", "optim.milestones: epoch 60 is outside training"),
    ("train.keep_checkpoints=[50]", "train.keep_checkpoints: epoch 50 is outside training"),
    ("data.synthetic_classes=0", "data.synthetic_classes: must be >= 2"),
    ("data.synthetic_test=0", "data.synthetic_test: must be >= 1"),
    ("data.train_subset=100000000", "data.train_subset: 100,000,000 examples asked but synthetic has 256"),
    ("intervention.batches=1000000000000", "intervention.batches: must be <= 100,000,000"),
    ("train.device=banana", "train.device: unknown device 'banana'"),
    ("model.hidden=[65536,65536,65536]", "model: 8,595,374,090 parameters"),
    ("data.synthetic_shape=[3,65536,65536]", "data.synthetic_shape: [3, 65536, 65536] x 384 examples"),
    ("seed.x=1", "--set seed.x: seed is an integer, not a section"),
    ("train.epochs.0=5", "--set train.epochs.0: train.epochs is an integer"),
    (f"train.threads={os.cpu_count() + 1}", f"train.threads: {os.cpu_count() + 1} asked but this machine has"),
    ("probes.at_end=true --set probes.top_k=2000", "probes.top_k: 2000 eigenvalues asked, but only 1,952"),
    ("pruning.criterion=ebn --set model.batch_norm=false",
     "pruning.criterion=ebn needs a BatchNorm with gamma and beta (affine) after layer"),
    ("optim.lr=" + "9" * 400, "optim.lr: expected a finite number"),
    ("optim.lr=1e39", "optim.lr: expected a number within float32's range (|x| <= 3.4e38), got 1e+39"),
    ("optim.weight_decay=-1e39", "optim.weight_decay: expected a number within float32's range"),
    ("pruning.layers.\u00b2.fraction=0.1", "no list element \u00b2 (the list has 2)"),  # '²'.isdigit() is True
    ("data.synthetic_shape=[]", "data.synthetic_shape: []; allowed: 1 to 3 sizes"),
    ("data.synthetic_shape=[1,40] --set data.augment=true", "data.augment: random crops and flips need images"),
    ("data.synthetic_shape=[1,40] --set data.image_size=20", "data.image_size: 20 must divide the side of square"),
    ("data.label_noise=0.001", "data.label_noise: 0.001 of 256 training examples rounds to no noisy label "
                               "(Python's round: half to even); allowed: 0, or above 0.00195 (p x N above one half)"),
    ("data.label_noise=0.001953125", "data.label_noise: 0.00195312 of 256 training examples rounds to no noisy label"),
    ("data.train_subset=33", "train.batch_size: 32 leaves a last batch of 1 of the 33 training examples"),
    ("pruning.criterion=activation --set pruning.layers.0.start=0 --set pruning.activation_every=20",
     "pruning.activation_every: 20 training batches before the first activation score, but the first event "
     "(layer 'fc1', epoch 0) comes after 8; allowed: at most 8"),
    ("data.name=fashion_mnist", "data.synthetic_shape: not read for data.name 'fashion_mnist' (only for synthetic)"),
    # accepted and then ignored (an audit, 2026-12-06)
    ("model.width=0.5", "model.width: not read (mlp sizes its layers by model.hidden), so it would change the run id"),
    ("data.root=/nonexistent", "data.root: not read for data.name 'synthetic' (only for fashion_mnist, cifar10, "
                               "cifar100), so it would be ignored"),
    ("train.compile_mode=max-autotune", "train.compile_mode: 'max-autotune' is read only with train.compile: true"),
    ("train.epochs=4 --set train.epochs=5", "--set train.epochs: given twice; give each key once"),
    ("optim.lr=0.1 --set optim={lr: 0.2}", "--set: keys 'optim.lr' and 'optim' both set optim.lr"),
], ids=lambda v: v.split("=")[0] if "=" in v else None)
def test_values_that_would_train_something_else_are_refused(tmp_path, capsys, override, field):
    sets = [a for o in override.split(" --set ") for a in ("--set", o)]
    _refused(tmp_path, capsys, [*_config(tmp_path, TINY_TEXT), *sets], field)


def test_an_empty_out_is_refused_instead_of_writing_to_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_exit(capsys, [*_config(tmp_path, TINY_TEXT), "--out", ""])
    assert "--out: empty" in err and sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


@pytest.mark.parametrize("argv, message", [
    (["demo", "--out", "", "--no-progress"], "--out: empty"),
    (["report", ""], "STUDY_DIR: empty"),
    (["report", " "], "STUDY_DIR: empty"),
])
def test_other_empty_paths_are_refused_too(tmp_path, capsys, monkeypatch, argv, message):
    from gstlab import executors

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(executors, "run_local", lambda *a, **k: pytest.fail("the demo ran"))
    assert message in _one_line_exit(capsys, argv)
    assert not list(tmp_path.iterdir())


def test_the_demo_checks_its_out_before_printing_anything(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert "exists and is not a directory" in _one_line_exit(capsys, ["demo", "--out", str(tmp_path / "afile")])


def test_a_report_on_an_index_it_cannot_read_is_one_line(tmp_path, capsys):
    (tmp_path / "index.csv").mkdir()
    assert "no index.csv file" in _one_line_exit(capsys, ["report", str(tmp_path)])
    (tmp_path / "index.csv").rmdir()
    (tmp_path / "index.csv").write_text('run_id,seed,status\nabc,1,"finished\n')  # no checksum file: from before them
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err  # the error alone: no warning that it has no checksum file (it is not used)
    assert "Traceback" not in err and err.count("\n") == 1 and "no checksum file" not in err
    assert "index.csv: not a CSV table (" in err and "`gst sweep` on the study rewrites it" in err


def test_a_nul_byte_in_the_run_name_or_out_is_one_line_and_makes_no_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_exit(capsys, _config(tmp_path, TINY_TEXT + 'name: "a\\0b"\n'))
    assert "name: 'a\\x00b' holds a control character" in err
    err = _one_line_exit(capsys, [*_config(tmp_path, TINY_TEXT), "--out", str(tmp_path / "x" / "a\0b")])
    assert "--out " in err and "holds a NUL byte" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]  # no runs/, no x/


def test_flatness_refuses_an_epoch_no_run_has(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["flatness", str(tmp_path), "--epoch", "9" * 300])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--epoch: expected an integer in 0..9,999" in err and err.count("\n") == 1


def test_a_ray_address_needs_an_ascii_port_number():
    from gstlab.executors import ExecutorError, _check_reachable

    for address in ("head:\u00b2", "head:99999", "head:0", "head"):
        with pytest.raises(ExecutorError, match="expected host:port, ray://host:port or auto"):
            _check_reachable(address)


def test_flatness_refuses_a_seed_beyond_64_bits(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["flatness", str(tmp_path), "--seed", "1" + "0" * 23])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--seed: expected an integer in 0..9,223,372,036,854,775,807" in err
    assert err.count("\n") == 1


# --------------------------------------------------------------------------------------------------- studies


def _study(tmp_path: Path, **changes) -> Path:
    inline = {k: v for k, v in TINY.items() if k != "seed"}  # each run's seed is the study's
    data = {"name": "t", "seeds": 1, "settings": [{"inline": inline}], **changes}
    return _write(tmp_path, data, "study.yaml")


@pytest.mark.parametrize("changes, extra, field", [
    ({"seeds": 1_000_000_000}, [], "seeds: at most 10,000 seeds"),
    ({}, ["--seeds", "1000000000", "--dry-run"], "seeds: at most 10,000 seeds"),
    ({"settings": [{"preset": ["F2_VGG_4"]}]}, [], "settings[0].preset: expected a string"),
    ({"settings": [{"preset": "NOPE"}]}, [], "settings[0].preset: unknown preset 'NOPE'"),
    ({"name": "../../x"}, [], "name: '../../x' is not a plain name"),
    ({"settings": [{"inline": TINY, "set": {"pruning.layers.0.name": "conv5"}}]}, [],
     "setting 'setting0': pruning.layers[0].name: unknown layer 'conv5'"),
    ({}, ["--set", "train.epochs.0=5"], "--set train.epochs.0: train.epochs is an integer"),
    ({}, ["--threads-per-worker", "100000"], "--threads-per-worker: 100000 asked but this machine has"),
    ({}, ["--workers", "1000000000"], "--workers: 1,000,000,000 asked but this machine has"),
    ({"settings": [{"config": "a\0b"}]}, [], "b': not a usable path (embedded null byte)"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, ["--set", "optim.lr=0.3"],
     "override (gst sweep --set) optim.lr: the study's grid varies optim.lr"),
    ({"grid": {"data.train_subset": [32, 1000]}}, [],
     "setting 'setting0': data.train_subset: 1,000 examples asked but synthetic has 256"),
    ({"grid": {"data.train_subset": [32, 65]}}, [],
     "setting 'setting0': train.batch_size: 32 leaves a last batch of 1"),
    ({"set": {"data.synthetic_shape": [1, 40], "data.augment": True}}, [], "setting 'setting0': data.augment: random"),
    ({"set": {"probes.at_end": True, "probes.top_k": 5000}}, [],  # each run had failed alone at its start
     "setting 'setting0': probes.top_k: 5000 eigenvalues asked, but only"),
    ({"set": {"model.hidden": [4096, 4096], "probes.at_end": True, "probes.max_iter": 1_000_000}}, [],
     "setting 'setting0': probes.max_iter: a Lanczos basis of 17,"),
], ids=["seeds-1e9", "--seeds-1e9-dry-run", "preset-list", "preset-unknown", "name-escapes", "layer-conv5",
        "set-into-int", "threads", "workers", "nul-in-path", "set-a-grid-key", "subset-beyond-the-data",
        "last-batch-of-one", "augment-1d", "top-k-beyond-the-survivors", "lanczos-beyond-memory"])
def test_bad_studies_and_sweep_flags_are_refused_before_anything_is_written(tmp_path, capsys, changes, extra, field):
    _refused(tmp_path, capsys, ["sweep", str(_study(tmp_path, **changes)), "--no-progress", *extra], field)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_local_sweep_refuses_a_device_this_machine_lacks_before_anything_is_written(tmp_path, capsys):
    """Each run had failed alone at its start (a study written for a GPU machine, swept on a laptop)."""
    _refused(tmp_path, capsys, ["sweep", str(_study(tmp_path, set={"train.device": "cuda"})), "--no-progress"],
             "setting 'setting0': train.device: 'cuda' requested but CUDA is not available")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_study_that_ended_elsewhere_is_not_judged_by_this_machine(tmp_path, capsys):
    """The device and memory checks are for runs that will run here: a study finished on a GPU machine and
    copied to a laptop (train.device is not in the run id) sweeps and dry-runs there as 'nothing to do'."""
    study_file = _study(tmp_path, set={"train.precision": "fp32", "train.epochs": 3, "optim.milestones": [2],
                                       "pruning.layers.0.end": 2, "pruning.layers.1.end": 2})
    out = tmp_path / "s"
    assert main(["sweep", str(study_file), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    for extra in ([], ["--dry-run"]):
        assert main(["sweep", str(study_file), "--out", str(out), "--no-progress", "--set", "train.device=cuda",
                     *extra]) == 0
        printed = capsys.readouterr().out
        assert "0 runs executed now" in printed or "0 runs to do" in printed, printed


def test_a_store_that_is_a_file_leaves_no_study_directory(tmp_path, capsys):
    (tmp_path / "store").write_text("a file")
    err = _one_line_exit(capsys, ["sweep", str(_study(tmp_path)), "--out", str(tmp_path / "s"),
                                  "--store", str(tmp_path / "store"), "--no-progress"])
    assert "--store" in err and not (tmp_path / "s").exists()


def test_a_study_name_cannot_escape_the_default_study_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the default --out is studies/NAME: studies/../../x is tmp_path/x
    err = _one_line_exit(capsys, ["sweep", str(_study(tmp_path, name="../../x")), "--no-progress"])
    assert "name: '../../x' is not a plain name" in err
    assert sorted(os.listdir(tmp_path)) == ["study.yaml", "work"] and not os.listdir(tmp_path / "work")


# ---------------------------------------------------------------------------------- damaged or replaced files


def _cut_off(monkeypatch, cfg, out: Path, epoch: int = 3) -> None:
    """Run ``cfg`` in ``out`` and stop it (as if killed) right after the checkpoint of ``epoch``."""
    _killed_after(monkeypatch, epoch)
    with pytest.raises(_Killed):
        execute(cfg, out)
    monkeypatch.undo()


def _tensor_offset(path: Path) -> int:
    """Byte offset of the largest tensor's data in a torch zip file (model weights or Adam moments)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _flip(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    at = _tensor_offset(path) + 4 * 17  # the 18th float32 of the tensor
    if how == "byte":
        data[at + 1] ^= 0xFF  # mantissa bits: a small change of one weight
    else:
        data[at + 3] ^= 0x40  # bit 30, the exponent's top bit: the value grows or shrinks by ~2^128
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    execute(cfg_of(TINY), out)
    return out


@pytest.mark.parametrize("how", ["byte", "exponent"])
def test_a_flipped_bit_in_a_checkpoint_is_detected_and_the_run_resumes_from_the_previous_one(
        tmp_path, capsys, monkeypatch, reference, how):
    out = tmp_path / "run"
    _cut_off(monkeypatch, cfg_of(TINY), out)
    _flip(out / store.CHECKPOINT, how)
    execute(cfg_of(TINY), out)
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged (checksum mismatch" in err and "resuming at epoch 3" in err, err
    assert err.count("\n") == 1
    assert _comparable(out) == _comparable(reference)
    (note,) = json.loads((out / "manifest.json").read_text())["recovered"]
    assert "checksum mismatch" in note["problem"]


def test_a_checkpoint_saved_without_a_checksum_resumes_with_a_warning(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    _cut_off(monkeypatch, cfg_of(TINY), out)
    state = torch.load(out / store.CHECKPOINT, weights_only=True)
    del state[store.CHECKSUM]
    torch.save(state, out / store.CHECKPOINT)  # as gstlab wrote it before issue 24
    execute(cfg_of(TINY), out)
    err = capsys.readouterr().err
    assert "has no checksum (saved by an older gstlab); resuming from it unverified" in err
    assert _comparable(out) == _comparable(reference)


def test_the_checkpoint_checksum_covers_every_tensor_and_value():
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "rows": [{"acc": 0.5}]}
    digest = store.state_digest(state)
    assert store.state_digest({"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3,
                               "rows": [{"acc": 0.5}]}) == digest
    for changed in ({**state, "epoch": 4}, {**state, "rows": [{"acc": 0.5000001}]},
                    {**state, "model": {"w": torch.arange(6.0).reshape(3, 2)}},
                    {**state, "model": {"w": torch.arange(6.0, dtype=torch.float64).reshape(2, 3)}}):
        assert store.state_digest(changed) != digest


@pytest.mark.parametrize("name", ["metrics.csv", "summary.json", "model_final.pt", "manifest.json", "config.yaml"])
def test_a_result_file_replaced_by_a_directory_is_moved_aside_and_redone(tmp_path, capsys, reference, name):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / name).unlink()
    (out / name).mkdir()
    (out / name / "x").write_text("something")
    assert main(_run_args(tmp_path, out)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{name} is a directory" in err and "moved it aside" in err, err
    assert (out / f"{name}.damaged-1" / "x").read_text() == "something" and (out / name).is_file()
    assert _comparable(out) == _comparable(reference)
    assert main(_run_args(tmp_path, out)) == 0 and capsys.readouterr().err == ""  # repaired for good


def test_a_checkpoint_replaced_by_a_directory_falls_back_to_the_previous_one(tmp_path, capsys, monkeypatch,
                                                                              reference):
    out = tmp_path / "run"
    _cut_off(monkeypatch, cfg_of(TINY), out)
    (out / store.CHECKPOINT).unlink()
    (out / store.CHECKPOINT).mkdir()
    execute(cfg_of(TINY), out)
    err = capsys.readouterr().err
    assert "moved it aside" in err and "resuming at epoch 3 from checkpoint.prev.pt" in err, err
    assert _comparable(out) == _comparable(reference)


def _run_args(tmp_path: Path, out: Path) -> list[str]:
    return [*_config(tmp_path, TINY_TEXT), "--out", str(out)]


@pytest.mark.parametrize("name, content", [("manifest.json", None), ("manifest.json", b"\x00garbage"),
                                           ("config.yaml", None)], ids=["manifest-deleted", "manifest-garbage",
                                                                         "config-deleted"])
def test_a_deleted_or_garbage_manifest_or_config_is_rebuilt_with_a_warning(tmp_path, capsys, reference, name,
                                                                           content):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    stamp = (out / "metrics.csv").stat().st_mtime_ns
    (out / name).unlink() if content is None else (out / name).write_bytes(content)
    assert main(_run_args(tmp_path, out)) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name} is" in err and "warning" in err, err
    assert (out / "metrics.csv").stat().st_mtime_ns == stamp  # not re-run: rebuilt from what survives
    assert (out / "config.yaml").read_text() == (reference / "config.yaml").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["files"] == json.loads(
        (reference / "manifest.json").read_text())["files"]


def test_an_edited_metric_without_a_manifest_is_found_and_the_run_redone(tmp_path, capsys, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()
    rows = (out / "metrics.csv").read_text().splitlines()
    best = json.loads((out / "summary.json").read_text())["best_test_acc"]
    (out / "metrics.csv").write_text("\n".join(r.replace(repr(best), "99.0") for r in rows) + "\n")
    assert main(_run_args(tmp_path, out)) == 0
    err = capsys.readouterr().err
    assert "summary.json does not follow from them" in err and "running it again" in err, err
    assert _comparable(out) == _comparable(reference)


# ------------------------------------------------------------------------------------------------- reports

SMALL = {**TINY, "train": {**TINY["train"], "epochs": 4}, "optim": {**TINY["optim"], "milestones": [3]},
         "pruning": {**TINY["pruning"], "layers": [{"name": "fc1", "fraction": 0.5, "start": 1, "end": 3}]}}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A study of two finished runs (seeds 0, 1), executed in this process."""
    study_dir = tmp_path_factory.mktemp("study") / "s"
    raw = {"name": "t", "seeds": 2, "settings": [{"inline": SMALL, "label": "L"}]}
    study = S.study_from_dict(raw)
    runs = S.expand(study)
    for run in runs:
        execute(run.cfg, study_dir / "runs" / run.run_id)
    store.write_checked_text(study_dir / "study.yaml", yaml.safe_dump({**raw, "seeds": [0, 1]}))  # as gst sweep
    S.write_index(study_dir, study, runs, study_dir)
    return study_dir


def _report(tmp_path: Path, capsys, finished_study: Path, damage) -> tuple[int, str, list[dict]]:
    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    index = (study_dir / "index.csv").read_text()  # index.csv names absolute run directories
    store.write_checked_text(study_dir / "index.csv",
                             index.replace(str(finished_study.resolve()), str(study_dir.resolve())))
    run_dir = sorted(p for p in (study_dir / "runs").iterdir() if p.is_dir())[0]
    damage(study_dir, run_dir)
    code = main(["report", str(study_dir)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    with open(study_dir / "report" / "runs.csv") as f:
        return code, err, list(csv.DictReader(f))


def _tamper_summary(study_dir: Path, run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "best_test_acc": 70.33}))


def _truncate_events(study_dir: Path, run_dir: Path) -> None:
    lines = (run_dir / "events.csv").read_text().splitlines(keepends=True)
    (run_dir / "events.csv").write_text("".join(lines[:-1]))


def _no_manifest_and_edited_metrics(study_dir: Path, run_dir: Path) -> None:
    (run_dir / "manifest.json").unlink()
    text = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(text.replace(",", ",9", 1))


def _binary_metrics(study_dir: Path, run_dir: Path) -> None:
    (run_dir / "metrics.csv").write_bytes(b"\xff\xfe\x00binary")


def _index_points_to_etc(study_dir: Path, run_dir: Path) -> None:
    text = (study_dir / "index.csv").read_text()
    # checksummed as gst would write it: the index is intact, yet a run directory lies outside any study
    store.write_checked_text(study_dir / "index.csv", text.replace(str(run_dir.resolve()), "/etc"))


@pytest.mark.parametrize("damage, status, reason", [
    (_tamper_summary, "damaged", "summary.json is damaged (checksum mismatch)"),
    (_truncate_events, "damaged", "events.csv is damaged (checksum mismatch)"),
    (_no_manifest_and_edited_metrics, "damaged", "manifest.json is missing or damaged"),
    (_binary_metrics, "damaged", "metrics.csv is damaged (checksum mismatch)"),
    (_index_points_to_etc, "outside", "index.csv names run_dir /etc"),
], ids=["summary-tampered", "events-truncated", "manifest-deleted-metrics-edited", "binary-metrics", "run-dir-etc"])
def test_a_report_leaves_out_runs_whose_files_do_not_match_and_says_how_to_redo_them(
        tmp_path, capsys, finished_study, damage, status, reason):
    code, err, rows = _report(tmp_path, capsys, finished_study, damage)
    assert code == 1 and reason in err, err
    assert f"1 of 2 runs left out of the report; redo them with: gst sweep {tmp_path / 's' / 'study.yaml'}" in err
    assert sorted(r["status"] for r in rows) == sorted(["finished", status])
    assert "70.33" not in (tmp_path / "s" / "report" / "runs.csv").read_text()
    assert "1 runs left out" in (tmp_path / "s" / "report" / "report.md").read_text()


def _manifest_and_config_gone(study_dir: Path, run_dir: Path) -> None:
    (run_dir / "manifest.json").unlink()
    (run_dir / "config.yaml").write_text("garbage: [")
    (run_dir / ".flatness.csv.x1y2.tmp").write_text("a gst flatness write under way")  # it takes no lock


def test_the_sweep_a_report_names_settles_a_run_whose_manifest_is_gone(tmp_path, capsys, finished_study):
    """A run whose manifest (and so its checksums) is gone is left out of a report, which says to sweep the
    study again; that sweep found the run finished and skipped it, so the next report left it out again."""
    code, err, _ = _report(tmp_path, capsys, finished_study, _manifest_and_config_gone)
    assert code == 1 and "manifest.json is missing or damaged" in err
    study_dir = tmp_path / "s"
    run_dir, settled = sorted(p for p in (study_dir / "runs").iterdir() if p.is_dir())
    untouched = (settled / "manifest.json").stat().st_mtime_ns
    sweep = ["sweep", str(study_dir / "study.yaml"), "--out", str(study_dir), "--no-progress"]
    assert main([*sweep, "--threads-per-worker", "1"]) == 0
    assert (settled / "manifest.json").stat().st_mtime_ns == untouched  # a settled run is left as it is
    out, err = capsys.readouterr()
    assert "0 runs executed now" in out and "manifest.json is damaged or missing; rebuilt it" in err
    repaired = C.parse(C.load_yaml(run_dir / "config.yaml"))
    assert C.run_id(repaired) == run_dir.name and repaired.train.threads == 1  # as a worker writes it
    assert (run_dir / ".flatness.csv.x1y2.tmp").exists()  # not taken for a killed write's leftover
    assert main(["report", str(study_dir)]) == 0
    assert "left out" not in capsys.readouterr().err


def test_a_run_the_sweep_cannot_settle_is_a_warning_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch,
                                                                          finished_study):
    def read_only(cfg, out):
        raise OSError(errno.EROFS, "Read-only file system", str(out / "manifest.json"))

    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    first, second = sorted(p for p in (study_dir / "runs").iterdir() if p.is_dir())
    (first / "manifest.json").unlink()
    shutil.rmtree(second)  # to be trained by this sweep
    monkeypatch.setattr(runner, "settle_ended", read_only)
    assert main(["sweep", str(study_dir / "study.yaml"), "--out", str(study_dir), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "1 runs executed now" in out
    line = next(line for line in err.splitlines() if "could not be settled" in line)
    assert line.startswith(f"gst: warning: {first}: ended, but could not be settled (") and "Read-only" in line, err


@pytest.mark.parametrize("checksummed", [True, False])
def test_a_binary_study_yaml_is_one_line_naming_the_command_that_rewrites_it(tmp_path, capsys, finished_study,
                                                                               checksummed):
    def damage(study_dir: Path, run_dir: Path) -> None:
        (study_dir / "study.yaml").write_bytes(b"\x80\x81binary")
        if not checksummed:  # from before study.yaml had a checksum
            (study_dir / "study.yaml.sha256").unlink()

    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    damage(study_dir, study_dir)
    assert main(["report", str(study_dir)]) == 1
    err = capsys.readouterr().err
    what = "does not match study.yaml.sha256 (edited or damaged)" if checksummed else "not UTF-8 text (damaged)"
    assert err.startswith(f"gst: error: {study_dir / 'study.yaml'}: {what}; `gst sweep` with the study's file")
    assert err.count("\n") == 1 and not (study_dir / "report").exists()


def test_a_report_on_a_read_only_directory_is_one_line(tmp_path, capsys, finished_study, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    err = _one_line_exit(capsys, ["report", str(finished_study)], code=1)
    assert f"{finished_study / '.report.new'} (Read-only file system)" in err  # the folder built before the swap


# --------------------------------------------------------------------------------- flatness, disks, Ctrl-C


def test_flatness_sets_a_binary_flatness_csv_aside(tmp_path, capsys, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "flatness.csv").write_bytes(b"\xff\x00binary")
    assert main(["flatness", str(run_dir), "--top-k", "2", "--samples", "16", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "flatness.csv is damaged; moved it aside to flatness.csv.damaged-1" in err and "Traceback" not in err
    with open(run_dir / "flatness.csv") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_only_gst_flatness_tables_are_kept_out_of_a_manifest():
    later = ["flatness.csv", "flatness.csv.sha256", "flatness.csv.damaged-2", "flatness_eps.csv.sha256"]
    checked = ["flatness.csv.damaged-backup", "flatness.csv.gz", "my_flatness.csv", "metrics.csv", "flatness"]
    assert [recovery._added_later(n) for n in later + checked] == [True] * len(later) + [False] * len(checked)


@pytest.mark.parametrize("settle", ["measured mid-run", "manifest rebuilt"])
def test_a_run_settled_after_gst_flatness_stays_verified_when_flatness_adds_rows(
        tmp_path, capsys, monkeypatch, reference, settle):
    """A run's final checksums covered every file there, the tables gst flatness appends to among them (when it
    measured a kept epoch of an unfinished run, or before a manifest was rebuilt): its next row made the run
    read damaged, to be trained again."""
    run_dir, cfg = tmp_path / "run", cfg_of(TINY, "train.keep_checkpoints=[1]")
    flatness = ["flatness", str(run_dir), "--top-k", "2", "--eps-directions", "1", "--samples", "16", "--no-progress"]
    if settle == "measured mid-run":
        _cut_off(monkeypatch, cfg, run_dir)
        assert main([*flatness, "--epoch", "1"]) == 0
    else:
        shutil.copytree(reference, run_dir)
        assert main(flatness) == 0
        (run_dir / "manifest.json").unlink()
    execute(cfg, run_dir)  # resumed to its end, or found ended: its checksums computed
    files = json.loads((run_dir / "manifest.json").read_text())["files"]
    assert "metrics.csv" in files and not [name for name in files if name.startswith("flatness")]
    assert main(flatness) == 0
    summary, problem = recovery.verify_finished(run_dir, strict=True)
    assert problem is None and summary["status"] == "finished"
    assert "running it again" not in capsys.readouterr().err
    manifest = json.loads((run_dir / "manifest.json").read_text())  # settled by a gstlab that listed the tables
    manifest["files"].update({"flatness.csv": "0" * 64, "flatness.csv.sha256": "0" * 64})
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert recovery.verify_finished(run_dir, strict=True)[1] is None
    manifest["files"]["metrics.csv"] = "0" * 64  # a result file's checksum is still checked
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert recovery.verify_finished(run_dir, strict=True)[1] == "metrics.csv is damaged (checksum mismatch)"


def test_an_edited_flatness_table_is_left_out_of_the_report_and_set_aside_by_the_next_measurement(
        tmp_path, capsys, finished_study):
    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    index = (study_dir / "index.csv").read_text()
    store.write_checked_text(study_dir / "index.csv",
                             index.replace(str(finished_study.resolve()), str(study_dir.resolve())))
    run_dir = sorted(p for p in (study_dir / "runs").iterdir() if p.is_dir())[0]
    flatness = ["flatness", str(run_dir), "--top-k", "2", "--samples", "16", "--no-progress"]
    assert main(flatness) == 0
    table = run_dir / "flatness.csv"
    assert (run_dir / "flatness.csv.sha256").read_text() == f"{store.file_digest(table)}  flatness.csv\n"
    rows = table.read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    values[header.index("eig_sum")] = "1e-9"  # a flatter model than measured
    table.write_text("\n".join([rows[0], ",".join(values)]) + "\n")
    capsys.readouterr()
    assert main(["report", str(study_dir)]) == 0
    err = capsys.readouterr().err
    assert "flatness.csv: does not match flatness.csv.sha256 (edited or damaged)" in err and "left out" in err
    assert not (study_dir / "report" / "flatness.csv").exists()  # no rows: the edited one never reaches it
    assert main(flatness) == 0
    assert "moved it aside to flatness.csv.damaged-1" in capsys.readouterr().err
    text, checked = store.read_checked_text(table, "")
    assert checked and len(text.splitlines()) == 2  # anew: header and the new measurement


@pytest.mark.parametrize("error, text", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")], ids=["read-only", "full"])
def test_a_disk_that_turns_read_only_or_full_mid_run_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch,
                                                                                  error, text):
    original, calls = store.os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 4:  # config, manifest, then the first epoch's tables
            raise OSError(error, text)
        return original(fd)

    monkeypatch.setattr(store.os, "fsync", fsync)
    out = tmp_path / "run"
    err = _one_line_exit(capsys, _run_args(tmp_path, out), code=1)
    assert f"cannot write or read {out}/" in err and f"({text})" in err, err
    assert not store.leftovers(out)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch, reference):
    def interrupted(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(run, epoch)

    original = runner.run_epoch
    monkeypatch.setattr(runner, "run_epoch", interrupted)
    out = tmp_path / "run"
    err = _one_line_exit(capsys, _run_args(tmp_path, out), code=130)
    assert err == "gst: interrupted; rerun the same command to resume\n"
    monkeypatch.undo()
    assert main(_run_args(tmp_path, out)) == 0 and _comparable(out) == _comparable(reference)


# ------------------------------------------------------------------------------------------------- data files


def _fashion(root: Path, damage: str) -> None:
    """The four Fashion-MNIST IDX files (4 images each), one of them damaged as ``damage`` says."""
    def idx(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
        return gzip.compress(header + array.astype(np.uint8).tobytes())

    root.mkdir()
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(idx(np.zeros((4, 28, 28))))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(idx(np.arange(4)))
    target = root / "train-images-idx3-ubyte.gz"
    if damage == "random":
        target.write_bytes(os.urandom(2000))
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-12])  # without the gzip trailer and the last data
    else:
        (root / "train-labels-idx1-ubyte.gz").write_bytes(idx(np.full(4, 200)))


@pytest.mark.parametrize("damage, text", [("random", "damaged, not an IDX file"),
                                          ("truncated", "damaged, not an IDX file"),
                                          ("labels-200", "labels in 0..200"),
                                          ("none", "train-images-idx3-ubyte.gz: not the official Fashion-MNIST")])
def test_damaged_fashion_mnist_files_are_one_line(tmp_path, capsys, monkeypatch, damage, text):
    from test_models_data import vouch_for

    _fashion(tmp_path / "fm", damage)
    if damage == "labels-200":  # past the content check, as if these 4 images were the official ones
        vouch_for(monkeypatch, tmp_path / "fm")
    data = {**TINY, "data": {"name": "fashion_mnist", "root": str(tmp_path / "fm")},
            "model": {"arch": "mlp", "hidden": [8]}, "pruning": {}}
    _refused(tmp_path, capsys, _config(tmp_path, yaml.safe_dump(data)), text)


@pytest.mark.parametrize("content", ["dotdot", "random"])
def test_a_cifar_archive_is_checksummed_before_anything_is_extracted(tmp_path, content):
    root = tmp_path / "root"
    root.mkdir()
    archive = root / cifar.SPECS["cifar10"]["archive"]
    if content == "random":
        archive.write_bytes(os.urandom(4096))
    else:
        with tarfile.open(archive, "w:gz") as tar:
            member = tarfile.TarInfo("../escaped.txt")
            member.size = 5
            tar.addfile(member, io.BytesIO(b"owned"))
    with pytest.raises(DataMissingError, match="checksum mismatch"):
        cifar.load("cifar10", str(root), False, True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-10-python.tar.gz", "root"]


def test_flatness_on_a_read_only_run_directory_is_one_line(tmp_path, capsys, monkeypatch, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    err = _one_line_exit(capsys, ["flatness", str(run_dir), "--top-k", "2", "--samples", "16", "--no-progress"],
                         code=1)
    assert f"cannot write or read {run_dir / 'flatness.csv'} (Read-only file system)" in err, err


def test_a_warning_that_quotes_a_line_break_stays_one_line(capsys):
    from gstlab.errors import warn

    warn("run dir 'a\nb\u2028c' is odd")
    assert capsys.readouterr().err == "gst: warning: run dir 'a\\nb\\u2028c' is odd\n"
