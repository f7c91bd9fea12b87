"""Progress in epochs over all runs: counted from each run's metrics.csv; a plain line per finished run and no
carriage return when the output is not a terminal."""

import io
import subprocess
import sys

import yaml

from gstlab.progress import EpochProgress, duration, epochs_done


def write_metrics(run_dir, epochs: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text("epoch,test_acc\n" + "".join(f"{e},50.0\n" for e in range(epochs)))


def test_epochs_are_counted_from_metrics_csv_and_resumed_runs_start_where_they_were(tmp_path):
    assert epochs_done(tmp_path / "missing") == 0
    write_metrics(tmp_path / "a", 4)
    out = io.StringIO()  # not a terminal
    prog = EpochProgress({"a": (tmp_path / "a", 10), "b": (tmp_path / "b", 5)}, stream=out)
    assert (prog.total, prog.start_done) == (15, 4)
    write_metrics(tmp_path / "a", 10)
    write_metrics(tmp_path / "b", 2)
    prog.update()
    assert sum(prog.done.values()) == 12
    prog.run_finished("a", "finished", "Prune_L seed 0 (a)")
    prog.run_finished("b", "failed", "No Pruning seed 0 (b)")  # ended early: its epochs count as done
    prog.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0].startswith("run 1/2 finished: Prune_L seed 0 (a); epochs 12/15, ")
    assert lines[0].endswith(" left")
    assert lines[1].startswith("run 2/2 failed: No Pruning seed 0 (b); epochs 15/15, ") and lines[1].endswith("done")


def test_disabled_progress_prints_nothing(tmp_path):
    out = io.StringIO()
    prog = EpochProgress({"a": (tmp_path / "a", 3)}, enabled=False, stream=out)
    prog.run_finished("a", "finished", "a")
    prog.close()
    assert out.getvalue() == ""


def test_duration():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_run_and_sweep_write_no_carriage_returns_to_a_log(tmp_path):
    cfg = {"data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 128,
                    "synthetic_test": 64},
           "model": {"arch": "mlp", "hidden": [16]}, "train": {"epochs": 2, "batch_size": 32}, "seed": 0}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "gstlab.cli", "run", "--config", str(tmp_path / "run.yaml"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stdout + run.stderr and run.stderr == ""
    study = {"name": "p", "seeds": [0, 1], "settings": [{"config": "run.yaml", "label": "tiny"}]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    sweep = subprocess.run([sys.executable, "-m", "gstlab.cli", "sweep", str(tmp_path / "study.yaml"), "--out",
                            str(tmp_path / "s"), "--workers", "2", "--threads-per-worker", "1"],
                           capture_output=True, text=True)
    assert sweep.returncode == 0, sweep.stderr
    assert "\r" not in sweep.stdout + sweep.stderr
    lines = sweep.stderr.splitlines()
    assert len(lines) == 2 and all(" finished: tiny seed " in line for line in lines)
    assert lines[1].startswith("run 2/2 finished: tiny seed ") and "; epochs 4/4, " in lines[1]
    assert lines[1].endswith(" elapsed, done")
