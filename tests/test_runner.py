"""End-to-end runs on tiny synthetic problems: results layout, events vs schedule, resume after kill -9,
bad input exits 2 with nothing written, divergence is recorded as a failure."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gstlab import config as C
from gstlab import store
from gstlab.cli import main
from gstlab.pruning.schedule import LayerPlan, event_epochs
from gstlab.runner import execute

TINY = {
    "data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 256, "synthetic_test": 128},
    "model": {"arch": "mlp", "hidden": [32, 24], "batch_norm": True},
    "optim": {"name": "adam", "lr": 1e-2, "milestones": [4]},
    "train": {"epochs": 6, "batch_size": 32, "eval_batch_size": 64, "progress": False},
    "pruning": {"criterion": "l2", "side": "largest", "period": 2,
                "layers": [{"name": "fc1", "fraction": 0.5, "start": 1, "end": 5},
                           {"name": "fc2", "fraction": 0.25, "start": 2, "end": 4}]},
    "seed": 1,
}


def interrupt_at(monkeypatch, epoch: int):
    """Make ``runner.run_epoch`` raise KeyboardInterrupt when it reaches ``epoch`` (a run cut off there);
    returns the real function, to put back."""
    from gstlab import runner

    real = runner.run_epoch

    def stop(run, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(run, e)

    monkeypatch.setattr(runner, "run_epoch", stop)
    return real


def _cut(monkeypatch, cfg: C.RunConfig, out: Path, epoch: int) -> None:
    """Run ``cfg`` into ``out`` (resuming what is there) until it is cut off at ``epoch``."""
    from gstlab.runner import run_or_skip

    interrupt_at(monkeypatch, epoch)
    with pytest.raises(KeyboardInterrupt):
        run_or_skip(cfg, out)
    monkeypatch.undo()


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def cfg_of(data: dict, *overrides: str) -> C.RunConfig:
    return C.parse(data, list(overrides))


def test_run_writes_results_and_events_follow_the_schedule(tmp_path):
    summary = execute(cfg_of(TINY), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "manifest.json", "metrics.csv", "events.csv", "summary.json", "model_final.pt"):
        assert (run / name).exists(), name
    assert not (run / "checkpoint.pt").exists()  # removed once finished
    metrics, events = read_csv(run / "metrics.csv"), read_csv(run / "events.csv")
    assert [int(r["epoch"]) for r in metrics] == list(range(6))
    for layer, n_units in (("fc1", 32), ("fc2", 24)):
        spec = next(s for s in TINY["pruning"]["layers"] if s["name"] == layer)
        plan = LayerPlan(layer, n_units, spec["fraction"], tuple(event_epochs(spec["start"], spec["end"], 2)))
        got = {int(e["epoch"]): int(e["units_removed"]) for e in events if e["layer"] == layer}
        assert got == plan.removals()
    for e in events:
        assert float(e["instability"]) == pytest.approx(
            (float(e["acc_before"]) - float(e["acc_after"])) / float(e["acc_before"]))
        row = metrics[int(e["epoch"])]
        assert float(e["acc_before"]) == float(row["test_acc_pre"]) and float(e["acc_after"]) == float(row["test_acc"])
    assert int(metrics[-1]["units_pruned"]) == 16 + 6
    masks = store.load_checkpoint(run / "model_final.pt")["model"]
    for layer in ("fc1", "fc2"):  # the units each event names are exactly the ones the saved model has masked
        named = [int(u) for e in events if e["layer"] == layer for u in e["units"].split()]
        assert len(named) == len(set(named)) == sum(int(e["units_removed"]) for e in events if e["layer"] == layer)
        assert sorted(named) == (masks[f"{layer}.unit_mask"] == 0).nonzero().flatten().tolist()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and set(manifest["seeds"]) >= {"init", "order", "prune"}
    assert summary["status"] == "finished" and summary["n_events"] == len(events)
    assert summary["params_remaining"] < summary["params_total"]


def test_finished_run_is_not_rerun_and_other_run_in_dir_is_refused(tmp_path):
    out = tmp_path / "run"
    execute(cfg_of(TINY), out)
    stamp = (out / "metrics.csv").stat().st_mtime_ns
    execute(cfg_of(TINY), out)
    assert (out / "metrics.csv").stat().st_mtime_ns == stamp
    assert main(["run", "--config", str(_write(tmp_path, TINY | {"seed": 2})), "--out", str(out)]) == 2


def _write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _comparable(run: Path) -> tuple:
    metrics = [{k: v for k, v in r.items() if k != "wall_s"} for r in read_csv(run / "metrics.csv")]
    summary = json.loads((run / "summary.json").read_text())
    return metrics, read_csv(run / "events.csv"), summary


@pytest.mark.parametrize("extra", [
    [],
    ["intervention.kind=zero_restore", "intervention.batches=100"],  # 64 batches/epoch: windows span epochs
    ["intervention.kind=gaussian", "intervention.batches=100"],
], ids=["prune", "zero_restore-window-open-at-kill", "gaussian-window-open-at-kill"])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, extra):
    data = C.to_dict(cfg_of(TINY, "train.epochs=8", "data.synthetic_train=2048", "pruning.layers.0.end=7",
                            *extra))
    cfg_path = _write(tmp_path, data)
    reference = tmp_path / "reference"
    execute(C.parse(data), reference)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gstlab.cli", "run", "--config", str(cfg_path), "--out", str(killed),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not _epochs_done(killed, at_least=3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert _comparable(killed) == _comparable(reference)


def _epochs_done(run: Path, at_least: int) -> bool:
    try:
        return len(read_csv(run / "metrics.csv")) >= at_least
    except (FileNotFoundError, csv.Error):
        return False


@pytest.mark.parametrize("override, field", [
    ("pruning.critrion=l2", "pruning.critrion: unknown key"),
    ("train.epochs=many", "train.epochs: expected an integer"),
    ("pruning.layers.0.fraction=1.5", "pruning.layers[0].fraction: must be in [0, 1)"),
    ("pruning.layers.0.name=fc9", "unknown layer 'fc9'; allowed: fc1, fc2"),
    ("pruning.layers.0.end=20", "pruning.layers[0].end: the schedule ends at epoch 20"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, override, field):
    out = tmp_path / "never"
    code = main(["run", "--config", str(_write(tmp_path, TINY)), "--out", str(out), "--set", override])
    assert code == 2
    err = capsys.readouterr().err
    assert field in err and err.count("\n") == 1
    assert not out.exists()


def test_divergence_marks_the_run_failed_and_keeps_results(tmp_path):
    out = tmp_path / "nan"
    data = TINY | {"optim": {"name": "sgd", "lr": 1e30, "momentum": 0.9}}
    code = main(["run", "--config", str(_write(tmp_path, data)), "--out", str(out), "--no-progress"])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["failure"]
    assert (out / "metrics.csv").exists()


def test_scratch_pruning_prunes_at_init_and_skips_training(tmp_path):
    data = TINY | {"pruning": {"criterion": "l2", "side": "smallest", "scratch": True,
                               "layers": [{"name": "fc1", "fraction": 0.5}]}}
    summary = execute(cfg_of(data), tmp_path / "scratch")
    metrics = read_csv(tmp_path / "scratch" / "metrics.csv")
    assert float(metrics[0]["train_acc"]) == 0.0 and int(metrics[0]["units_pruned"]) == 16
    assert float(metrics[0]["lr"]) == float(metrics[1]["lr"]) == 1e-2  # scheduler not stepped in epoch 0
    assert summary["mean_stability"] == 100.0 and summary["n_prune_epochs"] == 0


def test_an_events_accuracies_are_measured_in_eval_mode_with_no_training_step_between(tmp_path):
    """Instability compares two evaluations of one model: both in eval mode (no BatchNorm statistics updated),
    around the event and nothing else: no optimizer step, no training-mode forward (LANDSCAPE §13)."""
    from gstlab.runner import prepare, run_epoch

    run = prepare(cfg_of(TINY), tmp_path / "run")
    trace: list[str] = []
    run.model.register_forward_pre_hook(lambda m, args: trace.append("train" if m.training else "eval"))
    run.trainer.optimizer.register_step_pre_hook(lambda *args: trace.append("step"))
    prune = run.pruner.step
    run.pruner.step = lambda epoch: (trace.append("event"), prune(epoch))[1]
    for epoch in range(TINY["train"]["epochs"]):
        trace.clear()
        run_epoch(run, epoch)
        if "event" not in trace:
            continue
        first_eval = trace.index("eval")
        around = trace[first_eval:]
        assert set(around) == {"eval", "event"} and around.count("event") == 1, (epoch, around)
        assert around[0] == around[-1] == "eval"  # evaluated before and after the event
    assert run.rows["events"] and all(e["acc_before"] == run.rows["metrics"][e["epoch"]]["test_acc_pre"]
                                      for e in run.rows["events"])


def test_kept_epochs_a_finished_or_resumed_run_will_not_write_are_named_not_silently_dropped(tmp_path, capsys,
                                                                                            monkeypatch):
    """``train.keep_checkpoints`` is outside the run id: asking for more on a finished run, or for an epoch before
    a resume, writes nothing for them (an audit, 2026-12-06: the flatness error then advised the same field)."""
    from gstlab.runner import run_or_skip

    cfg = C.parse(TINY, [])
    run_or_skip(cfg, tmp_path / "done")
    capsys.readouterr()
    _, executed = run_or_skip(C.parse(TINY, ["train.keep_checkpoints=[0, 5]"]), tmp_path / "done")
    err = capsys.readouterr().err
    assert not executed and "train.keep_checkpoints: epoch(s) 0, 5 asked, but" in err and "holds this run, ended" in err
    _cut(monkeypatch, cfg, tmp_path / "cut", 3)
    capsys.readouterr()
    run_or_skip(C.parse(TINY, ["train.keep_checkpoints=[1, 4]"]), tmp_path / "cut")
    err = capsys.readouterr().err
    assert "epoch(s) 1 asked, but" in err and "resumes this run after epoch 2" in err  # 4 is still written
    assert (tmp_path / "cut" / "model_epoch4.pt").is_file() and not (tmp_path / "cut" / "model_epoch1.pt").exists()


def test_a_run_resumed_on_other_kernels_keeps_the_machine_of_its_earlier_epochs(tmp_path, capsys, monkeypatch):
    """The manifest named only the machine of a run's last stretch: a run cut off on one machine and resumed on
    another (or under other kernels, threads or torch) read as computed wholly on the second, whose numbers it
    does not reproduce. The earlier stretches are kept, warned once, and named by reports."""
    from gstlab.analysis.results import machine_lines
    from gstlab.runner import run_or_skip

    cfg, out = C.parse(TINY, []), tmp_path / "r"
    _cut(monkeypatch, cfg, out, 2)
    _cut(monkeypatch, cfg, out, 4)  # resumed on the same machine: nothing to keep
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_at_epoch"] == 2 and "earlier_machines" not in manifest
    other = {**manifest["machine"], "cpu_model": "Other CPU", "cpu_id": "GenuineIntel family 6 model 143 stepping 8",
             "aten_capability": "AVX512", "portable": False}
    store.write_json(out / "manifest.json", {**manifest, "machine": other, "device_name": "Other CPU"})  # epochs 0-3
    capsys.readouterr()
    _cut(monkeypatch, cfg, out, 5)
    err = capsys.readouterr().err
    assert "resumes at epoch 4 on" in err
    assert "epochs 0-3 ran on Other CPU [GenuineIntel family 6 model 143 stepping 8] (AVX512; AVX512 kernels)" in err
    run_or_skip(cfg, out)  # resumed again on this machine: the stretch is kept, no new one, no new warning
    assert "earlier_machines" not in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    [stretch] = manifest["earlier_machines"]
    assert stretch["epochs"] == [0, 3] and stretch["machine"] == other
    assert manifest["machine"]["cpu_model"] != "Other CPU" and manifest["status"] == "finished"
    [line] = machine_lines(pd.DataFrame({"run_dir": [str(out)]}))
    assert ("(resumed there; epochs 0-3 were computed on Other CPU [GenuineIntel family 6 model 143 stepping 8] "
            "(AVX512; AVX512 kernels)") in line


def test_earlier_machines_are_contiguous_stretches_of_whatever_differed():
    from gstlab.environment import earlier_machines

    def on(cpu: str, torch_version: str = "2.13.0", earlier: list | None = None) -> dict:
        info = {"machine": {"cpu_model": cpu, "cpu_count": 2}, "torch_threads": 1, "device": "cpu",
                "versions": {"torch": torch_version}, "git_commit": cpu}
        return {**info, "earlier_machines": earlier} if earlier else info

    assert earlier_machines(on("A"), on("A"), 5) == []
    assert earlier_machines({"status": "running"}, on("A"), 5) == []  # a manifest from before machines: unknown
    assert earlier_machines(on("A"), {**on("A"), "git_commit": "B"}, 5) == []  # the code alone is not the kernels
    first = earlier_machines(on("A"), on("B"), 5)
    assert [(s["epochs"], s["machine"]["cpu_model"]) for s in first] == [([0, 4], "A")]
    assert earlier_machines(on("B", earlier=first), on("B"), 9) == first
    back = earlier_machines(on("B", earlier=first), on("A"), 12)  # B computed 5-11 over two of its stretches
    assert [(s["epochs"], s["machine"]["cpu_model"]) for s in back] == [([0, 4], "A"), ([5, 11], "B")]
    assert earlier_machines(on("B", earlier=first), on("C"), 5) == first  # no epoch finished on B

    def mkl(branch: str) -> dict:
        return {**on("A"), "machine": {"cpu_model": "A", "pinned_env": {"MKL_CBWR": branch}}}

    assert len(earlier_machines(mkl("AVX2"), mkl("COMPATIBLE"), 3)) == 1  # portable mode before and after 2026-12-07

    def generation(cpu_id: str | None) -> dict:  # one model name, two CPU generations (a VM's "AMD EPYC")
        machine = {"cpu_model": "A"} | ({"cpu_id": cpu_id} if cpu_id else {})
        return {**on("A"), "machine": machine}

    zen3, zen4 = "AuthenticAMD family 25 model 1 stepping 1", "AuthenticAMD family 25 model 17 stepping 1"
    assert [s["machine"]["cpu_id"] for s in earlier_machines(generation(zen3), generation(zen4), 3)] == [zen3]
    assert earlier_machines(generation(None), generation(zen4), 3) == []  # a manifest from before cpu_id: unknown
    torch_only = earlier_machines(on("A", "2.12.0"), on("A"), 3)
    assert [s["versions"]["torch"] for s in torch_only] == ["2.12.0"]


def test_a_layer_fraction_that_removes_no_unit_is_warned_by_the_run_and_by_the_sweep(tmp_path, capsys):
    """ceil((1 - 0.02) x 32) keeps all 32 units of fc1: the run had pruned nothing, with no word (fraction 0 had
    its own warning)."""
    from gstlab.runner import run_or_skip

    run_or_skip(C.parse(TINY, ["pruning.layers.0.fraction=0.02"]), tmp_path / "r")
    assert ("pruning.layers[0].fraction: 0.02 of fc1's 32 units removes none (ceil((1 - fraction) x 32) keeps all), "
            "so fc1 is never pruned") in capsys.readouterr().err
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "seeds": 2, "settings": [
        {"inline": TINY, "set": {"pruning.layers.0.fraction": 0.02}}]}))
    assert main(["sweep", str(study), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("of fc1's 32 units removes none") == 1 and "so fc1 is never pruned (setting 'setting0')" in err


def test_a_checkpoint_with_untyped_callback_states_from_an_earlier_version_resumes(tmp_path, monkeypatch):
    """Before callbacks were saved with their types (2026-12-06, 07:08) a run with probes saved bare states; the
    check of added callbacks must not read that as "saved with none" (a review found such runs refused)."""
    from gstlab.runner import run_or_skip

    cfg = C.parse(TINY, ["probes.epochs=[5]", "probes.samples=16", "probes.top_k=2", "probes.grad_moment=false"])
    _cut(monkeypatch, cfg, tmp_path / "r", 3)
    for name in (store.CHECKPOINT, store.PREVIOUS_CHECKPOINT):
        if (tmp_path / "r" / name).exists():
            state = store.load_checkpoint(tmp_path / "r" / name)
            state["callbacks"] = [s["state"] for s in state["callbacks"]]  # the earlier, untyped form
            store.save_checkpoint(tmp_path / "r" / name, state)
    summary, executed = run_or_skip(cfg, tmp_path / "r")
    assert executed and summary["status"] == "finished" and summary["epochs_done"] == 6


class ThreadLog:
    """An epoch callback that records torch's thread count during the run."""

    def __init__(self):
        self.seen: list[int] = []

    def after_epoch(self, run, epoch, events):
        import torch

        self.seen.append(torch.get_num_threads())

    def write(self, run):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("threads", [1, None])
def test_a_run_uses_its_threads_and_leaves_the_process_as_it_found_it(tmp_path, threads):
    """A sweep's in-process worker once left torch at one thread, so a later run with threads: null (this file's
    resume test) reduced floats differently from the same run in a fresh process."""
    import torch

    from gstlab import api

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a count the run's own differs from, whatever the machine's default
    log = ThreadLog()
    try:
        api.run(C.to_dict(cfg_of(TINY, "train.epochs=3", "optim.milestones=[2]", "pruning.layers.0.end=2",
                                  "pruning.layers.1.end=2", f"train.threads={threads or 'null'}")),
                tmp_path / "run", callbacks=[log])
        assert log.seen == [threads or 2] * 3 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
