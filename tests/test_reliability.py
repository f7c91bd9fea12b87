"""Issue 15: every bad input gets exit 2 and one line naming the field, with nothing written; every damaged
file is repaired from what survives or reported with the command that fixes it; nothing gets stuck.
One test per item of the issue (docs/reliability.md has the table)."""

import dataclasses
import errno
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gstlab import config as C
from gstlab import executors, runner, store
from gstlab import study as S
from gstlab.cli import main
from gstlab.data import DataMissingError, cifar
from gstlab.runner import execute
from test_runner import TINY, _comparable, _write, cfg_of


def _bad(tmp_path: Path, capsys, argv: list[str], field: str) -> None:
    """``gst ARGV`` exits 2 with one line naming ``field`` (nothing on stdout); nothing is written under
    tmp_path/never."""
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)]) == 2
    printed, err = capsys.readouterr()
    assert field in err and err.count("\n") == 1 and printed == "", (err, printed)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def _run_cfg(tmp_path: Path, *overrides: str) -> list[str]:
    return ["run", "--config", str(_write(tmp_path, TINY)), "--no-progress",
            *(a for o in overrides for a in ("--set", o))]


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "1.e-3", "10e-4", "0.1e-1", "1_0e-4"])
def test_1_every_python_float_form_is_a_number(tmp_path, text):
    value = float(text)
    assert C.parse(TINY, [f"optim.lr={text}"]).optim.lr == value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(TINY).replace("lr: 0.01", f"lr: {text}"))
    assert C.parse(C.load_yaml(path)).optim.lr == value
    study = S.study_from_dict({"settings": [{"inline": TINY}], "grid": {"optim.lr": [text]},
                               "set": {"intervention.scale": text}})
    (run,) = S.expand(study)
    assert run.cfg.optim.lr == value and run.cfg.intervention.scale == value


@pytest.mark.parametrize("text", ["", "# nothing here\n", "{}\n"], ids=["empty", "comments", "braces"])
def test_2_an_empty_config_file_is_refused(tmp_path, capsys, text):
    (tmp_path / "empty.yaml").write_text(text)
    _bad(tmp_path, capsys, ["run", "--config", str(tmp_path / "empty.yaml")], "is empty")


def test_3_a_binary_config_file_is_refused(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(b"\x80\x04\x95\xff\xfe binary \x00\x01")
    _bad(tmp_path, capsys, ["run", "--config", str(tmp_path / "bin.yaml")], "not UTF-8 text")


@pytest.mark.parametrize("override, field", [
    ("optim.lr=.nan", "optim.lr"), ("optim.weight_decay=.nan", "optim.weight_decay"),
    ("model.width=.nan", "model.width"), ("optim.gamma=.nan", "optim.gamma"), ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=nan", "optim.lr"), ("intervention.scale=-inf", "intervention.scale"),
    ("probes.eps_max=.inf", "probes.eps_max"),
])
def test_4_non_finite_numbers_are_refused(tmp_path, capsys, override, field):
    _bad(tmp_path, capsys, _run_cfg(tmp_path, override), f"{field}")
    with pytest.raises(C.ConfigError, match="finite|integer"):
        C.parse(TINY, [override])


@pytest.mark.parametrize("override, field", [
    ("train.epochs=1000000000000", "train.epochs: must be <= "),
    ("data.synthetic_train=10000000000", "data.synthetic_train: must be <= "),
    ("train.batch_size=100000000", "train.batch_size: must be <= "),
    ("probes.eps_step=0.000000000001", "probes.eps_step: the grid"),
    ("model.width=1e6", "model.width: must be <= "),
    ("data.image_size=1000000", "data.image_size: must be <= "),
])
def test_5_size_fields_are_bounded(tmp_path, capsys, override, field):
    _bad(tmp_path, capsys, _run_cfg(tmp_path, override), field)


def test_6_an_out_that_is_a_file_or_read_only_is_refused_without_leftovers(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    assert main([*_run_cfg(tmp_path), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a directory" in err and err.count("\n") == 1
    assert not list(tmp_path.glob(".file*.lock"))
    assert main(["sweep", "--study", "fig2_vgg", "--scale", "smoke", "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([*_run_cfg(tmp_path), "--out", str(tmp_path / "ro" / "run")]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and err.count("\n") == 1
    monkeypatch.undo()
    (tmp_path / "mounted").mkdir()
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # an existing directory on a read-only mount
    assert main(["sweep", "--study", "fig2_vgg", "--scale", "smoke", "--out", str(tmp_path / "mounted")]) == 2
    assert "not writable" in capsys.readouterr().err and not list((tmp_path / "mounted").iterdir())


def test_7_a_bad_yaml_value_in_sweep_set_is_refused(tmp_path, capsys):
    _bad(tmp_path, capsys, ["sweep", "--study", "fig2_vgg", "--scale", "smoke", "--set", "train.epochs=[1"],
         "--set train.epochs")


@pytest.mark.parametrize("flag, value", [("--workers", "-1"), ("--workers", "0"), ("--threads-per-worker", "0"),
                                         ("--runs-per-gpu", "0"), ("--seeds", "0")])
def test_8_non_positive_worker_counts_are_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--study", "fig2_vgg", "--scale", "smoke", "--out", str(tmp_path / "never"), flag, value])
    assert exit_.value.code == 2
    assert f"{flag}: expected an integer >= 1, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("text", ["", "run_id,setting,label,seed,run_dir,status\n"], ids=["empty", "header-only"])
def test_9_report_on_an_empty_index_says_so(tmp_path, capsys, text):
    (tmp_path / "index.csv").write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "index.csv" in err and "gst sweep" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- damaged files


class _Killed(Exception):
    pass


def _killed_after(monkeypatch, epoch: int) -> None:
    """Make the next run stop (as if killed) right after the checkpoint of ``epoch``."""
    original = runner._checkpoint

    def checkpoint(run, e):
        original(run, e)
        if e == epoch:
            raise _Killed

    monkeypatch.setattr(runner, "_checkpoint", checkpoint)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(len(data)), "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "random", "empty"])
def test_10_a_damaged_checkpoint_resumes_from_the_previous_one(tmp_path, capsys, monkeypatch, how):
    cfg = cfg_of(TINY)
    execute(cfg, tmp_path / "reference")
    out = tmp_path / "run"
    _killed_after(monkeypatch, 3)
    with pytest.raises(_Killed):
        execute(cfg, out)
    monkeypatch.undo()
    assert (out / store.PREVIOUS_CHECKPOINT).exists()
    _damage(out / store.CHECKPOINT, how)
    execute(cfg, out)
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged" in err and "epoch 3" in err and err.count("\n") == 1
    assert _comparable(out) == _comparable(tmp_path / "reference")
    (note,) = json.loads((out / "manifest.json").read_text())["recovered"]
    assert note["file"] == "checkpoint.pt" and "epoch 3" in note["action"]
    assert not (out / store.CHECKPOINT).exists() and not (out / store.PREVIOUS_CHECKPOINT).exists()


def test_10_without_a_good_checkpoint_the_run_restarts_from_scratch(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / store.CHECKPOINT).write_bytes(b"garbage")
    execute(cfg_of(TINY), out)
    assert "restarting from scratch" in capsys.readouterr().err
    assert _comparable(out) == _comparable(_reference(tmp_path))


def _reference(tmp_path: Path) -> Path:
    execute(cfg_of(TINY), tmp_path / "reference")
    return tmp_path / "reference"


@pytest.mark.parametrize("name, how", [("summary.json", "truncated"), ("metrics.csv", "truncated"),
                                       ("metrics.csv", "empty"), ("events.csv", "random"),
                                       ("model_final.pt", "truncated")])
def test_11_damaged_results_of_a_finished_run_are_redone(tmp_path, capsys, name, how):
    out = _reference(tmp_path)
    expected = _comparable(out)
    _damage(out / name, how)
    execute(cfg_of(TINY), out)
    assert f"{name} is damaged" in capsys.readouterr().err
    assert _comparable(out) == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["recovered"][0]["file"] == name
    assert S.run_status(out) == "finished"


@pytest.mark.parametrize("text", [b"\xff\x00binary", b"data: [unclosed\n", b"seed: 7\n", b"- a list\n"],
                         ids=["binary", "bad-yaml", "other-run", "list"])
def test_12_a_damaged_config_yaml_is_rewritten_from_the_run_it_belongs_to(tmp_path, capsys, text):
    out = _reference(tmp_path)
    expected = (out / "config.yaml").read_text()
    (out / "config.yaml").write_bytes(text)
    execute(cfg_of(TINY), out)
    assert "config.yaml is damaged" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == expected
    if text == b"seed: 7\n":
        return  # a valid config of another run: with no manifest it is another run
    (out / "config.yaml").write_bytes(text)
    (out / "manifest.json").write_text("{")
    (out / "summary.json").write_text("")
    assert main([*_run_cfg(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is damaged" in err and f"rm -r {out}" in err and "holds a different run" not in err


def test_13_a_run_killed_after_its_summary_is_made_consistent(tmp_path):
    out = _reference(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "files": None}))
    shutil.copy(out / "model_final.pt", out / store.CHECKPOINT)
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    execute(cfg_of(TINY), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and set(manifest["files"]) >= {"summary.json", "metrics.csv"}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "events.csv", "events_classes.csv",
                                                     "manifest.json", "metrics.csv", "model_final.pt", "summary.json"]


def test_13_a_diverged_run_keeps_no_checkpoint(tmp_path, monkeypatch):
    original = runner.run_epoch

    def run_epoch(run, epoch):  # the training loss turns nan in epoch 3, after three checkpoints; as the real
        train = original(run, epoch) if epoch != 3 else run.trainer.train_epoch()  # one, no row for that epoch
        return dataclasses.replace(train, loss=math.nan) if epoch == 3 else train

    monkeypatch.setattr(runner, "run_epoch", run_epoch)
    out = tmp_path / "nan"
    assert execute(cfg_of(TINY), out)["status"] == "failed"
    assert not list(out.glob("checkpoint*")) and not list(out.glob(".*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    final = store.load_checkpoint(out / "model_final.pt")  # the weights of epoch 3, not of epoch 2's last row
    assert final["epoch"] == 3 and final["diverged"] is True


def test_14_summary_json_of_a_diverged_run_is_strict_json(tmp_path):
    out = tmp_path / "nan"
    data = TINY | {"optim": {"name": "sgd", "lr": 1e30, "momentum": 0.9}}
    assert main(["run", "--config", str(_write(tmp_path, data)), "--out", str(out), "--no-progress"]) == 1

    def refuse(name):
        raise ValueError(f"bare {name} in strict JSON")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["status"] == "failed" and summary["mean_stability"] is None


@pytest.mark.slow  # three `gst run` subprocesses
def test_15_the_index_is_true_after_a_killed_sweep_and_counts_runs_executed_elsewhere(tmp_path, monkeypatch):
    study = S.study_from_dict({"settings": [{"inline": TINY}], "seeds": 2})
    res = executors.Resources(workers=1, threads=1)
    started = []
    original = executors._start

    def start(run, *args):
        if started:
            raise KeyboardInterrupt  # the sweep is killed while its second run starts
        started.append(run.run_id)
        return original(run, *args)

    monkeypatch.setattr(executors, "_start", start)
    with pytest.raises(KeyboardInterrupt):
        executors.sweep(study, {}, tmp_path / "a", "local", res, progress=False)
    status = {r["run_id"]: r["status"] for r in _index(tmp_path / "a")}
    assert status[started[0]] == "finished" and list(status.values()).count("pending") == 1
    monkeypatch.undo()
    runs = S.expand(study)
    outcomes = executors.run_local(runs, tmp_path / "a", tmp_path / "b", res, progress=False)
    executed = {o.run_id: o.executed for o in outcomes}
    assert executed == {started[0]: False, next(r.run_id for r in runs if r.run_id != started[0]): True}


def _index(study_dir: Path) -> list[dict]:
    import csv

    with open(study_dir / "index.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ security


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cifar_dir(base: Path, marker: Path) -> Path:
    directory = base / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1], b"payload": _Payload(marker)}
    for name in [*cifar.SPECS["cifar10"]["train"], *cifar.SPECS["cifar10"]["test"]]:
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    return directory


def test_16_cifar_batches_are_checked_and_never_run_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar, "CACHE", tmp_path / "cache")
    directory = _cifar_dir(tmp_path / "data", marker)
    with pytest.raises(DataMissingError, match="not found"):  # ./data is searched only when asked
        cifar.load("cifar10", None, False, True)
    with pytest.raises(DataMissingError, match="checksum mismatch"):
        cifar.load("cifar10", "data", False, True)
    with pytest.raises(DataMissingError, match="refused"):
        cifar.unpickle(directory / "data_batch_1")
    assert not marker.exists()
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [3, 4],
                                    b"filenames": [b"a.png", b"b.png"], b"batch_label": b"x"}, protocol=2))
    batch = cifar.unpickle(clean)
    assert batch[b"labels"] == [3, 4] and batch[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_reader_that_closes_the_output_early_gets_no_traceback(tmp_path):
    # 10,500 dry-run lines overflow the pipe buffer, so gst is still printing when the reader leaves
    cmd = [sys.executable, "-m", "gstlab.cli", "sweep", "--study", "fig3", "--seeds", "500", "--dry-run",
           "--out", str(tmp_path / "study")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"fig3@mini: 10500 runs")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, b"")  # 128 + SIGPIPE, as a shell reports `yes | head`
    assert not (tmp_path / "study").exists()


def test_a_study_index_is_checksummed_and_an_edited_one_is_never_used(tmp_path, capsys):
    """index.csv decides which runs a report reads: an edited or damaged one would drop runs silently."""
    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 2, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    index, checksum = out / "index.csv", out / "index.csv.sha256"
    assert checksum.read_text() == f"{store.file_digest(index)}  index.csv\n"  # sha256sum's format
    assert main(["report", str(out)]) == 0
    from gstlab.environment import cpu_id, cpu_model, native_isa

    computed_on = [line for line in (out / "report" / "report.md").read_text().splitlines() if "computed on" in line]
    cpu = f"{cpu_model()} [{cpu_id()}]" if cpu_id() else cpu_model()
    assert len(computed_on) == 1 and computed_on[0].startswith(f"- computed on: {cpu} ({native_isa()}; ")
    assert computed_on[0].endswith(": 2 runs")  # the machine of each run, from its manifest
    capsys.readouterr()
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")  # one run fewer
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err
    assert "index.csv: does not match index.csv.sha256 (edited or damaged); `gst sweep` on the study" in err
    assert err.count("\n") == 1
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0  # rewrites it; trains nothing
    assert "0 runs executed now" in capsys.readouterr().out and len(index.read_text().splitlines()) == 3
    checksum.unlink()  # an index from before checksums: used, with one warning
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().err.count("has no checksum file") == 1
    text = index.read_text()
    index.write_text(text[:text.rindex(",") - 3])  # ... cut mid-row, it would have listed a 'pending' run
    assert main(["report", str(out)]) == 1
    assert "index.csv: line 3 has no status (truncated or damaged)" in capsys.readouterr().err
    assert not (out / ".report.new").exists()  # refused before anything was written
    index.write_text(text[:text.rindex("ed")])  # cut inside the status: 'finish' is no status
    assert main(["report", str(out)]) == 1
    assert "index.csv: line 3 has status 'finish' (truncated or damaged)" in capsys.readouterr().err


def test_a_damaged_index_is_exit_1_even_when_it_lists_no_runs(tmp_path, capsys):
    """The checksum is checked before the index is asked for runs: an index cut to its header (or not UTF-8)
    beside its checksum file was exit 2, "lists no runs", as if nothing were wrong with it."""
    index = tmp_path / "index.csv"
    store.write_checked_text(index, "run_id,status\nabc,finished\n")
    for damaged in (b"run_id,status\n", b"run_id,status\n\xff\xfe,finished\n"):
        index.write_bytes(damaged)
        assert main(["report", str(tmp_path)]) == 1
        assert "index.csv: does not match index.csv.sha256 (edited or damaged)" in capsys.readouterr().err
    store.write_checked_text(index, "run_id,status\n")  # intact, and empty
    assert main(["report", str(tmp_path)]) == 2
    assert "index.csv: lists no runs (empty or damaged)" in capsys.readouterr().err


def test_a_study_file_kept_by_a_sweep_is_checksummed_and_an_edited_one_is_never_used(tmp_path, capsys):
    """study.yaml tells the report which figure it draws and how: an edit would change the report silently."""
    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 1, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    kept, checksum = out / "study.yaml", out / "study.yaml.sha256"
    assert checksum.read_text() == f"{store.file_digest(kept)}  study.yaml\n"
    kept.write_text(kept.read_text() + "figure: figure5\n")
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"gst: error: {kept}: does not match study.yaml.sha256 (edited or damaged); `gst sweep` with the "
                   f"study's file and --out {out} writes it again (or delete study.yaml.sha256 to use it as it is)\n")
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0  # writes both again
    assert main(["report", str(out)]) == 0
    checksum.unlink()  # a study.yaml from before checksums: used, with one warning
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().err.count("study.yaml has no checksum file") == 1


@pytest.mark.parametrize("header", store.LEGACY_EVENT_COLUMNS, ids=["before-scores", "before-units"])
def test_a_run_from_before_events_named_their_units_and_scores_still_verifies(tmp_path, header):
    import csv

    from gstlab import recovery

    execute(cfg_of(TINY), tmp_path / "run")
    events = tmp_path / "run" / "events.csv"
    with open(events, newline="") as f:
        rows = list(csv.DictReader(f))
    store.write_csv(events, rows, header)  # as written before those columns
    (tmp_path / "run" / "manifest.json").unlink()  # checked by structure
    assert recovery.verify_finished(tmp_path / "run")[1] is None


def test_a_report_folder_is_checksummed_and_its_tables_are_verified_before_use(tmp_path, capsys):
    """A report's tables feed verdicts and post-hoc scripts, also from copies committed elsewhere."""
    from gstlab.analysis.report import SUMS, read_report_table, report_runs
    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 2, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    folder = out / "report"
    listed = dict(line.split("  ")[::-1] for line in (folder / SUMS).read_text().splitlines())
    assert {"runs.csv", "report.md", "epochs.csv"} <= set(listed)
    assert all(store.file_digest(folder / name) == digest for name, digest in listed.items())
    assert len(report_runs(out)) == 2
    copy = tmp_path / "committed"  # as docs/figures holds a report: some of its files, and SHA256SUMS
    copy.mkdir()
    for name in ("runs.csv", "report.md", SUMS):
        (copy / name).write_bytes((folder / name).read_bytes())
    assert len(report_runs(copy / "runs.csv")) == 2
    runs = (copy / "runs.csv").read_text()
    (copy / "runs.csv").write_text(runs.replace(",finished,", ",finished ,", 1))  # one run no longer counts
    with pytest.raises(store.DamagedFileError, match=r"runs.csv: does not match .*SHA256SUMS \(edited or damaged\)"):
        report_runs(copy / "runs.csv")
    (copy / "extra.csv").write_text("a\n1\n")
    with pytest.raises(store.DamagedFileError, match="extra.csv: not in .*SHA256SUMS"):
        read_report_table(copy / "extra.csv")
    good = (copy / SUMS).read_bytes()
    for damaged in (good + b"0123abc\n", good.replace(b"  runs.csv", b"  runs.csv\x80"), b""):
        (copy / SUMS).write_bytes(damaged)
        with pytest.raises(store.DamagedFileError, match="SHA256SUMS: not a SHA256SUMS file"):
            report_runs(copy / "runs.csv")
    (copy / SUMS).unlink()  # a report folder from before these checksums: used, with one warning
    capsys.readouterr()
    assert len(read_report_table(copy / "runs.csv")) == 2
    assert capsys.readouterr().err.count("has no SHA256SUMS") == 1


def test_a_report_written_again_leaves_no_file_of_the_earlier_one(tmp_path):
    """A table the new report does not write (its runs now lack it) must not stay, listed in SHA256SUMS."""
    from gstlab.analysis.report import SUMS
    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 1, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    (out / "report" / "curvature.csv").write_text("run_id\nstale\n")  # as a report of other runs left it
    assert main(["report", str(out)]) == 0
    assert not (out / "report" / "curvature.csv").exists()
    assert "curvature.csv" not in (out / "report" / SUMS).read_text()
    assert not [p.name for p in out.iterdir() if "report" in p.name and p.name != "report"]  # built apart, swapped in


def test_a_finished_run_whose_directory_is_gone_is_left_out_and_a_moved_study_finds_its_runs(tmp_path, capsys):
    """A run index.csv calls finished but whose files are gone was reported as a finished run of empty numbers."""
    import shutil

    import pandas as pd

    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 2, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    moved = tmp_path / "moved"
    shutil.move(out, moved)  # the index names the runs where they were
    assert main(["report", str(moved)]) == 0
    assert list(pd.read_csv(moved / "report" / "runs.csv")["status"]) == ["finished", "finished"]
    gone = sorted(p for p in (moved / "runs").iterdir() if p.is_dir())[0]
    shutil.rmtree(gone)
    capsys.readouterr()
    assert main(["report", str(moved)]) == 1
    runs = pd.read_csv(moved / "report" / "runs.csv").set_index("run_id")
    assert runs.loc[gone.name, "status"] == "damaged" and "summary.json is missing" in runs.loc[gone.name, "failure"]
    assert "gst sweep" in capsys.readouterr().err


def test_one_parser_reads_sha256sum_output_for_report_folders_and_checked_files(tmp_path):
    digest = "ab" * 32
    assert store.parse_sums(f"{digest}  runs.csv\n{digest} *fig 1.png\n\n") == {"runs.csv": digest, "fig 1.png": digest}
    for bad in ("", "\n", f"{digest}\n", "xyz  runs.csv\n", f"{digest[:-1]}  a\n"):
        with pytest.raises(ValueError):
            store.parse_sums(bad)
    path = tmp_path / "index.csv"
    store.write_checked_text(path, "run_id\n")
    assert store.read_checked_text(path, "gst sweep") == ("run_id\n", True)
    store.checksum_path(path).write_text(store.checksum_path(path).read_text().replace("index.csv", "other.csv"))
    with pytest.raises(store.DamagedFileError, match="does not match index.csv.sha256"):
        store.read_checked_text(path, "gst sweep")  # a checksum of another file vouches for nothing


def test_a_run_directory_holding_another_run_is_never_read_as_that_run(tmp_path, capsys):
    """A finished run copied under another run's id verified against its own manifest and was reported as the
    other run (both seeds with one seed's numbers)."""
    from gstlab.study import run_status
    from test_study import SMALL, write_study

    study = write_study(tmp_path, {"name": "s", "seeds": 2, "settings": [{"inline": SMALL, "label": "a"}]})
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    first, second = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
    shutil.rmtree(second)
    shutil.copytree(first, second)
    assert run_status(second) == "damaged" and run_status(first) == "finished"
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    assert f"run {second.name} left out (damaged): its files record run {first.name}, not {second.name}" in \
        capsys.readouterr().err


def test_a_sweep_that_ends_early_stops_its_workers_and_reports_a_kill_by_name(tmp_path, monkeypatch):
    """An error in the sweep (here: while recording the first outcome) left the other worker training, orphaned;
    a worker killed by a signal was reported with the last line of an earlier attempt's log."""
    from gstlab import executors
    from gstlab import study as S
    from test_study import SMALL

    study = S.study_from_dict({"name": "s", "seeds": [0, 1], "settings": [
        {"inline": SMALL, "label": "short"},
        {"inline": SMALL, "label": "long", "set": {"train.epochs": 400, "optim.milestones": [300]}}]})
    runs = [r for r in S.expand(study) if r.seed == 0]
    procs = []
    real_popen = executors.subprocess.Popen
    monkeypatch.setattr(executors.subprocess, "Popen", lambda *a, **k: procs.append(real_popen(*a, **k)) or procs[-1])

    def fail(outcome):
        raise RuntimeError("the disk is full")

    res = executors.Resources(workers=2, threads=1)
    with pytest.raises(RuntimeError, match="the disk is full"):
        executors.run_local(runs, tmp_path / "store", tmp_path / "study", res, progress=False, on_done=fail)
    assert len(procs) == 2 and all(p.poll() is not None for p in procs)  # none outlives the sweep
    log = tmp_path / "study" / "logs" / f"{runs[1].run_id}.log"
    log.write_bytes(b"gst: error: an earlier attempt's last line\n")

    class Killed:
        returncode = -9

    worker = executors.Worker(runs[1], Killed(), None, log.stat().st_size)
    outcome = executors._local_outcome(worker, tmp_path / "store", tmp_path / "study")
    assert outcome.detail.startswith("worker was killed by SIGKILL: no output (log:")


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    """mkstemp creates 0600 files: a shared store or study was unreadable to its other users."""
    store.atomic_write_text(tmp_path / "index.csv", "run_id\n")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "index.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_run_directory_computed_before_a_result_revision_is_not_handed_back(tmp_path, monkeypatch):
    cfg = cfg_of(TINY | {"intervention": {"kind": "zero", "batches": 3}})
    new_id = C.run_id(cfg)
    with monkeypatch.context() as m:  # the code before the revision: the same config hashed without it
        m.setattr(C, "result_revisions", lambda cfg: {})
        old = execute(cfg, tmp_path / "mine")
    assert old["status"] == "finished" and old["run_id"] != new_id
    with pytest.raises(runner.RunDirError, match=rf"holds run {old['run_id']}: this config's id is now {new_id} "
                                                 r"\(a result revision"):
        execute(cfg, tmp_path / "mine")
    assert execute(cfg, tmp_path / "anew")["run_id"] == new_id
