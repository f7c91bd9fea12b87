"""TensorBoard sink: event files read back with TensorBoard's own reader equal the run's CSV files; a resumed
run has every epoch once; run ids do not change; a sweep's runs sit side by side under the study."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gstlab import config as C
from gstlab import runner
from gstlab.runner import execute
from gstlab.sinks import TENSORBOARD_DIR, export_run
from test_runner import TINY, interrupt_at, read_csv

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(value) -> float:
    return float(np.float32(float(value)))  # TensorBoard stores scalars as float32


def assert_matches_csv(tb: dict, run_dir: Path) -> None:
    metrics = read_csv(run_dir / "metrics.csv")
    for column, tag in (("train_acc", "train/acc"), ("train_loss", "train/loss"), ("test_acc", "test/acc"),
                        ("test_loss", "test/loss"), ("lr", "lr"), ("units_pruned", "units/pruned")):
        assert tb[tag] == [(int(row["epoch"]), f32(row[column])) for row in metrics], tag
    events = read_csv(run_dir / "events.csv")
    for layer in ("fc1", "fc2"):
        want = [(int(ev["epoch"]), f32(ev["instability"])) for ev in events if ev["layer"] == layer]
        assert want and tb[f"instability/{layer}"] == want
    summary = json.loads((run_dir / "summary.json").read_text())
    assert tb["summary/mean_stability"] == [(5, f32(summary["mean_stability"]))]
    assert tb["summary/best_test_acc"] == [(5, f32(summary["best_test_acc"]))]


def test_run_writes_tensorboard_events_equal_to_its_csv_files_and_keeps_its_id(tmp_path):
    cfg = C.parse(TINY, ["train.tensorboard=true"])
    assert C.run_id(cfg) == C.run_id(C.parse(TINY))
    execute(cfg, tmp_path / "run")
    assert_matches_csv(scalars(tmp_path / "run" / TENSORBOARD_DIR), tmp_path / "run")
    plain = tmp_path / "plain"
    execute(C.parse(TINY), plain)
    assert not (plain / TENSORBOARD_DIR).exists()
    for name in ("metrics.csv", "events.csv"):  # the CSV record does not depend on the sink
        plain_rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(plain / name)]
        assert plain_rows == [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(tmp_path / "run" / name)]


def test_resumed_run_has_every_epoch_once(tmp_path, monkeypatch):
    """Killed after epoch 2 was written to TensorBoard but after the checkpoint of epoch 1 only: the resumed
    run trains epoch 2 again, and TensorBoard's reader keeps the second one (purge_step)."""
    cfg = C.parse(TINY, ["train.tensorboard=true", "train.checkpoint_every=2"])
    real = interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, tmp_path / "run")
    assert [s for s, _ in scalars(tmp_path / "run" / TENSORBOARD_DIR)["test/acc"]] == [0, 1, 2]
    monkeypatch.setattr(runner, "run_epoch", real)
    execute(cfg, tmp_path / "run")
    assert len(list((tmp_path / "run" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    tb = scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert [s for s, _ in tb["test/acc"]] == list(range(6))
    assert_matches_csv(tb, tmp_path / "run")


def test_a_run_restarted_from_epoch_0_over_earlier_events_has_every_epoch_once(tmp_path, monkeypatch):
    """Killed before its first checkpoint (or redone from scratch): no purge step was passed at epoch 0, so
    TensorBoard's reader had the first attempt's epochs twice."""
    cfg = C.parse(TINY, ["train.tensorboard=true", "train.checkpoint_every=10"])
    real = interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    monkeypatch.setattr(runner, "run_epoch", real)
    execute(cfg, tmp_path / "run")
    assert [s for s, _ in scalars(tmp_path / "run" / TENSORBOARD_DIR)["test/acc"]] == list(range(6))


@pytest.mark.parametrize("sets", [[], ["pruning.layers=[]"]], ids=["pruned", "unpruned"])
def test_export_of_a_finished_run_equals_the_live_events(tmp_path, sets):
    """Unpruned, the summary's class-detail values are NaN: the live sink wrote them, the export (from JSON
    null) did not."""
    execute(C.parse(TINY, ["train.tensorboard=true", *sets]), tmp_path / "run")
    assert export_run(tmp_path / "run", tmp_path / "exported")
    live, exported = scalars(tmp_path / "run" / TENSORBOARD_DIR), scalars(tmp_path / "exported")
    assert live.keys() == exported.keys()
    assert all(live[tag] == exported[tag] for tag in live if tag != "time/epoch_s")
    assert not export_run(tmp_path / "nothing", tmp_path / "none")


def test_sweep_places_each_runs_events_under_the_study(tmp_path):
    import yaml

    study = {"name": "tb", "figure": "generic", "scale": "smoke", "seeds": [0, 1],
             "settings": [{"label": "Prune_L", "inline": TINY}, {"label": "No Pruning", "inline": TINY,
                                                                  "set": {"pruning.layers": []}}],
             "set": {"train.epochs": 3, "optim.milestones": [2], "pruning.layers.0.end": 2,
                     "pruning.layers.1.end": 2}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-m", "gstlab.cli", "sweep", str(path), "--out", str(out), "--tensorboard",
                           "--workers", "2", "--threads-per-worker", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    index = read_csv(out / "index.csv")
    assert len(index) == 4
    runs = sorted((out / TENSORBOARD_DIR).glob("*/*"))
    assert sorted(p.relative_to(out / TENSORBOARD_DIR).as_posix() for p in runs) == sorted(
        f"{row['label']}/seed{row['seed']}-{row['run_id']}" for row in index)
    for row in index:
        tb = scalars(out / TENSORBOARD_DIR / row["label"] / f"seed{row['seed']}-{row['run_id']}")
        metrics = read_csv(Path(row["run_dir"]) / "metrics.csv")
        assert tb["test/acc"] == [(int(r["epoch"]), f32(r["test_acc"])) for r in metrics]
    # the one tool a user points at the study sees every run
    multiplexer = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_multiplexer")
    mux = multiplexer.EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    assert sorted(mux.Runs()) == sorted(f"{TENSORBOARD_DIR}/{row['label']}/seed{row['seed']}-{row['run_id']}"
                                        for row in index)
