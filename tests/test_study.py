"""Studies: grid expansion and frozen ids, bad input before any run, skip/resume after a killed sweep, two
studies sharing a store, a crashing run fails alone, and the Ray executor on a local Ray instance."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gstlab import config as C
from gstlab.cli import main
from gstlab.experiments.presets import SCALES
from gstlab.runner import execute
from gstlab.study import expand, grid_points, load_study_file, setting_notes, study_from_dict
from test_runner import TINY

SMALL = {k: v for k, v in C.to_dict(C.parse(TINY, ["train.epochs=4", "pruning.layers.0.end=3",
                                                     "pruning.layers.1.end=3"])).items() if k != "seed"}  # the study's


def study(**extra) -> dict:
    return {"name": "t", "seeds": 2, "settings": [{"inline": SMALL, "label": "L"},
                                                 {"inline": SMALL, "label": "S", "set": {"pruning.side": "smallest"}}],
            **extra}


def write_study(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def index(study_dir: Path) -> list[dict]:
    with open(study_dir / "index.csv") as f:
        return list(csv.DictReader(f))


def results(run_dir: Path) -> tuple:
    """What must not depend on how the run was executed (no timings)."""
    metrics = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    summary = json.loads((run_dir / "summary.json").read_text())
    return metrics, (run_dir / "events.csv").read_text(), summary


def reference_run(run, out: Path) -> Path:
    """The run executed here with the workers' thread count (float reductions depend on it)."""
    execute(C.replace(run.cfg, train=C.replace(run.cfg.train, threads=1)), out)
    return out


def test_grid_expansion_and_run_ids_are_stable():
    s = study_from_dict(study(grid={"optim.lr": [0.01, 0.001], "pruning.period": [1, 2]}))
    assert grid_points(s.grid)[:2] == [{"optim.lr": 0.01, "pruning.period": 1}, {"optim.lr": 0.01,
                                                                               "pruning.period": 2}]
    runs = expand(s)
    assert len(runs) == 2 * 4 * 2
    assert [r.run_id for r in runs[:3]] == ["25be0f38f72c", "207b0c399208", "f1cfe3605004"]
    assert [r.run_id for r in expand(s)] == [r.run_id for r in runs]  # expansion is deterministic
    assert {(r.label, r.seed) for r in runs} == {(lab, seed) for lab in "LS" for seed in (0, 1)}


@pytest.mark.parametrize("extra, message", [
    ({"grid": {"pruning.perod": [1, 2]}}, "pruning.perod: unknown key"),
    ({"grid": {"pruning.period": []}}, "grid.pruning.period: expected a non-empty list"),
    ({"grid": {}}, "grid: expected a non-empty mapping"),
    ({"seeds": 0}, "seeds: expected a positive int"),
    ({"seeds": [1.5]}, "seeds: expected a positive int n (seeds 0..n-1) or a non-empty list of ints, got [1.5]"),
    ({"seeds": -1}, "seeds: expected a positive int n (seeds 0..n-1) or a non-empty list of ints, got -1"),
    ({"figure": "figure9"}, "figure: unknown figure 'figure9'"),
    ({"setings": []}, "study: unknown key(s) ['setings']"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed: a run's seed comes from the study's seeds; allowed: seeds: n"),
    ({"set": {"seed": 5}}, "set.seed: a run's seed comes from the study's seeds"),
    ({"override": {"seed.x": 1}}, "override.seed.x: a run's seed comes from the study's seeds"),  # was dropped
    ({"grid": {"seed.x": [1, 2]}}, "grid.seed.x: a run's seed comes from the study's seeds"),
    ({"grid": {"train.channels_last": [True, False]}},  # outside the run id: one value would never run
     "grid: points {'train.channels_last': True} and {'train.channels_last': False} of setting 'L' give one run on "
     "this machine"),
    # runs that silently collapsed into fewer, or a value silently replaced
    ({"seeds": [1, 1, 2]}, "seeds: seed 1 is listed twice (the same runs); allowed: distinct seeds"),
    ({"grid": {"optim.lr": [0.1, 0.1]}}, "grid.optim.lr: value 0.1 is listed twice"),
    ({"grid": {"optim": [{"lr": 0.1}, {"lr": 0.2}], "optim.lr": [0.3, 0.4]}},
     "grid: axes 'optim' and 'optim.lr' both vary optim.lr; allowed: one axis per field"),
    ({"grid": {"optim.momentum": [0.8, 0.9], "optim": [{"lr": 0.1}, {"momentum": 0.5}]}},
     "grid: axes 'optim' and 'optim.momentum' both vary optim.momentum; allowed: one axis per field"),
    ({"grid": {"optim": [{"lr": 0.1}, {"momentum": 0.5}]}, "set": {"optim.momentum": 0.7}},
     "set.optim.momentum: the study's grid varies optim.momentum (grid.optim); allowed: a key the grid does not"),
    ({"grid": {"pruning.side": ["smallest", "largest"]}},
     "settings[1].set.pruning.side: the study's grid varies pruning.side"),
    ({"grid": {"optim.lr": [0.1, 0.2]}, "set": {"optim": {"lr": 0.5}}}, "set.optim: the study's grid varies optim.lr"),
    ({"set": {"optim.lr": 0.5, "optim": {"lr": 0.1}}}, "set: keys 'optim' and 'optim.lr' both set optim.lr"),
    ({"set": {"pruning": None, "pruning.period": 3}}, "set: keys 'pruning' and 'pruning.period' both set"),
    ({"set": {"": 0.5}}, "set: key '' is not a config field; allowed: a dotted field name"),
    ({"set": {"optim.lr=0.5": 1}}, "set: key 'optim.lr=0.5' is not a config field"),
    ({"settings": [{"inline": SMALL, "label": " "}]}, "settings[0].label: empty"),
    ({"settings": [{"inline": {}}]}, "settings[0].inline: is empty; give at least one field"),
])
def test_bad_study_is_refused_before_any_run(tmp_path, capsys, extra, message):
    out = tmp_path / "s"
    assert main(["sweep", str(write_study(tmp_path, study(**extra))), "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_set_mapping_and_dotted_keys_of_different_fields_are_kept():
    s = study_from_dict(study(set={"optim": {"lr": 0.05}, "optim.momentum": 0.5}))
    assert {(r.cfg.optim.lr, r.cfg.optim.momentum) for r in expand(s)} == {(0.05, 0.5)}


def test_a_dry_run_refuses_what_the_sweep_would_before_timing_any_model(tmp_path, capsys, monkeypatch):
    from gstlab import executors
    from gstlab.experiments import calibration

    monkeypatch.setattr(calibration, "measure_spec", lambda key: pytest.fail("timed a model the sweep refuses"))
    huge = study(settings=[{"inline": SMALL, "set": {"model.hidden": [65536, 65536, 65536]}}])
    out = tmp_path / "s"
    assert main(["sweep", str(write_study(tmp_path, huge)), "--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "setting 'setting0': model: 8,595,374,090 parameters" in err and err.count("\n") == 1
    monkeypatch.setattr(executors, "detect_gpus", lambda: 1)  # each run gets its GPU: it may not name one
    named = study(set={"train.device": "cuda:1"})
    assert main(["sweep", str(write_study(tmp_path, named)), "--dry-run", "--out", str(out)]) == 2
    assert "train.device: 'cuda:1' (setting L); a sweep gives each run its GPU" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setattr(executors, "detect_gpus", lambda: 0)
    (tmp_path / "afile").write_text("")
    for flag in ("--out", "--store"):  # a directory the sweep could not make
        argv = ["sweep", str(write_study(tmp_path, study())), "--dry-run", flag, str(tmp_path / "afile")]
        assert main(argv) == 2
        assert f"{flag} {tmp_path / 'afile'}: exists and is not a directory" in capsys.readouterr().err


def test_calibration_does_not_build_a_model_above_the_parameter_limit(monkeypatch):
    from gstlab import preflight
    from gstlab.experiments.calibration import measure_spec, spec

    monkeypatch.setattr(preflight, "MAX_PARAMS", 1000)  # SMALL's MLP has 3,059: built, it would be timed
    model = {k: v for k, v in C.to_dict(C.parse(SMALL).model).items() if k != "supplied"}
    with pytest.raises(C.ConfigError, match="^model: 3,059 parameters .*allowed: at most 1,000$"):
        measure_spec(spec(model, (1, 8, 8), 3, 32, 64))


@pytest.mark.parametrize("flags, message", [
    (["--address", "h:6379"], "--address: only for --executor ray"),
    (["--gpus", "1"], "--gpus: only for --executor ray"),
    (["--runs-per-gpu", "2"], "--runs-per-gpu: this machine shows no CUDA GPU to pack runs onto"),
    (["--executor", "ray", "--workers", "2"], "--workers: only for --executor local"),
    (["--executor", "ray", "--runs-per-gpu", "2"], "--runs-per-gpu: with --executor ray only together with --gpus"),
], ids=["address-local", "gpus-local", "runs-per-gpu-no-gpu", "workers-ray", "runs-per-gpu-ray-no-gpus"])
def test_sweep_flags_the_executor_does_not_read_are_refused_not_ignored(tmp_path, capsys, monkeypatch, flags,
                                                                        message):
    monkeypatch.setattr("gstlab.executors.detect_gpus", lambda: 0)
    out = tmp_path / "s"
    for dry in (["--dry-run"], []):
        assert main(["sweep", str(write_study(tmp_path, study())), "--out", str(out), "--no-progress", *flags,
                     *dry]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_sweep_help_names_both_default_study_directories(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "studies/<name> for a study file" in text and "studies/<study>-<scale> for --study" in text


def test_a_ray_cluster_that_refuses_or_does_not_answer_is_named_in_one_line(monkeypatch):
    from gstlab import executors

    def probe(answer: str) -> str | None:  # what the child process asking the GCS printed -> the error line
        monkeypatch.setattr(executors.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
            command, 0, stdout=answer, stderr="[W gcs_client.cc] one of Ray's retry lines\n"))
        try:
            executors._check_gcs("h:6379")
        except executors.ExecutorError as err:
            return str(err)
        return None

    assert probe("AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing\n") == (
        "--address h:6379: the Ray cluster refused the connection; clusters started by `ray start` with Ray 2.60 "
        "use token authentication: export RAY_AUTH_MODE=token and give the cluster's token (~/.ray/auth_token on "
        "this machine, or RAY_AUTH_TOKEN)")
    assert probe("RpcError: Timed out while waiting for GCS to become available.\n") == (
        "--address h:6379: no Ray cluster answers there (RpcError: Timed out while waiting for GCS to become "
        "available.)")
    assert probe("") is None  # the cluster id came back


def test_unreachable_ray_address_is_refused_before_any_run(tmp_path, capsys):
    pytest.importorskip("ray")  # without Ray the sweep stops earlier: '--executor ray needs Ray'
    out = tmp_path / "s"
    args = ["sweep", str(write_study(tmp_path, study())), "--out", str(out), "--executor", "ray",
            "--address", "127.0.0.1:9", "--no-progress"]
    assert main(args) == 2
    assert "cannot reach a Ray cluster" in capsys.readouterr().err
    assert not out.exists()


def sweep_cmd(study_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gstlab.cli", "sweep", str(study_file), "--out", str(out), "--no-progress",
            "--threads-per-worker", "1", *extra]


def test_killed_sweep_resumes_and_skips_finished_runs(tmp_path):
    data = study(seeds=1, set={"train.epochs": 8, "data.synthetic_train": 2048, "pruning.layers.0.end": 7})
    study_file, out = write_study(tmp_path, data), tmp_path / "s"
    proc = subprocess.Popen(sweep_cmd(study_file, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _second_run_started(out):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker die together, as on a lost machine
    proc.wait()
    statuses = [r["status"] for r in index(out)]
    assert statuses == ["finished", "pending"]  # the index is rewritten as each run ends
    first, second = (Path(r["run_dir"]) for r in index(out))
    assert (first / "summary.json").exists() and not (second / "summary.json").exists()
    finished_at = (first / "summary.json").stat().st_mtime_ns
    assert subprocess.run(sweep_cmd(study_file, out), capture_output=True).returncode == 0
    assert [r["status"] for r in index(out)] == ["finished", "finished"]
    assert (first / "summary.json").stat().st_mtime_ns == finished_at  # skipped, not re-run
    for run in expand(study_from_dict(data)):
        assert results(out / "runs" / run.run_id) == results(reference_run(run, tmp_path / "ref" / run.run_id))


def _second_run_started(out: Path) -> bool:
    try:
        rows = index(out)
    except (FileNotFoundError, csv.Error):
        return False
    if len(rows) < 2:
        return False
    try:
        return sum(1 for _ in open(Path(rows[1]["run_dir"]) / "metrics.csv")) >= 3
    except FileNotFoundError:
        return False


def test_two_studies_sharing_a_store_do_not_corrupt_each_other(tmp_path):
    a = write_study(tmp_path, study(seeds=[0, 1]), "a.yaml")
    b = write_study(tmp_path, study(seeds=[1, 2]), "b.yaml")
    store = tmp_path / "store"
    procs = [subprocess.Popen(sweep_cmd(f, tmp_path / f.stem, "--store", str(store)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for f in (a, b)]
    assert [p.wait() for p in procs] == [0, 0]
    shared = {r["run_id"] for r in index(tmp_path / "a")} & {r["run_id"] for r in index(tmp_path / "b")}
    assert len(shared) == 2 and len([d for d in (store / "runs").iterdir() if d.is_dir()]) == 6
    for run in expand(study_from_dict(study(seeds=[1]))):
        assert results(store / "runs" / run.run_id) == results(reference_run(run, tmp_path / "ref" / run.run_id))


def test_a_crashing_run_fails_alone_and_is_reported(tmp_path, capsys):
    data = study(seeds=1)
    broken = {**SMALL, "data": {"name": "fashion_mnist", "root": str(tmp_path / "nowhere")}}
    data["settings"].append({"inline": broken, "label": "broken"})
    out = tmp_path / "s"
    assert main(["sweep", str(write_study(tmp_path, data)), "--out", str(out), "--workers", "2",
                 "--threads-per-worker", "1", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "1 failed" in printed and "Fashion-MNIST not found" in printed
    assert [r["status"] for r in index(out)] == ["finished", "finished", "pending"]


def test_a_diverged_run_is_reported_as_diverged_not_as_a_crash(tmp_path, capsys):
    diverging = {**SMALL, "optim": {"name": "sgd", "lr": 1e30, "momentum": 0.9}}
    data = {"name": "d", "seeds": 1, "settings": [{"inline": diverging, "label": "nan"}]}
    out = tmp_path / "s"
    assert main(["sweep", str(write_study(tmp_path, data)), "--out", str(out), "--no-progress"]) == 1
    assert "diverged at epoch 0: training loss nan; see its summary.json" in capsys.readouterr().out
    assert [r["status"] for r in index(out)] == ["failed"]
    run_id = index(out)[0]["run_id"]
    assert main(["sweep", str(tmp_path / "study.yaml"), "--out", str(out), "--no-progress"]) == 1  # still failed
    assert f"1 run(s) failed in an earlier sweep and stay failed: {run_id}" in capsys.readouterr().out


@pytest.mark.ray
def test_ray_executor_lands_the_same_results_as_local(tmp_path):
    data = study(seeds=1)
    local, remote = tmp_path / "local", tmp_path / "ray"
    ray = pytest.importorskip("ray")
    common = ["--threads-per-worker", "1", "--no-progress"]
    assert main(["sweep", str(write_study(tmp_path, data)), "--out", str(local), *common]) == 0
    try:
        assert main(["sweep", str(write_study(tmp_path, data)), "--out", str(remote), "--executor", "ray",
                     *common]) == 0
    finally:
        ray.shutdown()
    assert [r["status"] for r in index(remote)] == ["finished", "finished"]
    for row in index(local):
        assert results(Path(row["run_dir"])) == results(remote / "runs" / row["run_id"])


def test_every_study_preset_expands_at_every_scale(capsys, monkeypatch):
    from gstlab.experiments import studies
    from gstlab.experiments.studies import STUDIES, study_dict

    monkeypatch.setattr(studies, "machine_rates", lambda: (studies.MINI_IMAGES_PER_CPU_S, "injected rates"))

    for name in STUDIES:
        for scale in SCALES:
            runs = expand(study_from_dict(study_dict(name, scale)))
            assert runs and all(r.cfg.name.endswith(f"@{scale}") for r in runs)
    assert main(["presets", "--studies"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in STUDIES)


def test_example_study_files_expand():
    folder = Path(__file__).parents[1] / "examples"
    runs = {path.name: expand(load_study_file(path)[0]) for path in folder.glob("*.yaml")}
    assert [name for name, expanded in runs.items() if not expanded] == []
    e1 = runs["explore_e1_fig2_vgg.yaml"]
    assert len(e1) == 8 and {r.seed for r in e1} == {1000, 1001} and {r.cfg.data.image_size for r in e1} == {16}


def test_sweep_set_overrides_every_run_and_is_validated(tmp_path, capsys):
    assert main(["sweep", "--study", "fig5", "--scale", "smoke", "--set", "model.width=0.25", "--dry-run"]) == 0
    assert main(["sweep", "--study", "fig5", "--scale", "smoke", "--set", "model.widht=1", "--dry-run"]) == 2
    assert "model.widht: unknown key" in capsys.readouterr().err


def test_sweep_set_wins_over_a_settings_own_set_and_the_written_study_keeps_it(tmp_path):
    study = write_study(tmp_path, {"name": "s", "seeds": 1, "set": {"optim.lr": 0.01},
                                   "settings": [{"inline": SMALL, "label": "a", "set": {"optim.lr": 0.002}},
                                                {"inline": SMALL, "label": "b"}]})
    assert [r.cfg.optim.lr for r in expand(load_study_file(study)[0])] == [0.002, 0.01]  # study set, then setting's
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--set", "optim.lr=0.0005", "--out", str(out), "--no-progress"]) == 0
    written, raw = load_study_file(out / "study.yaml")
    assert raw["override"] == {"optim.lr": 0.0005} and raw["set"] == {"optim.lr": 0.01}
    runs = expand(written)
    assert [r.cfg.optim.lr for r in runs] == [0.0005] and [r.label for r in runs] == ["a"]  # one run, two names
    assert runs[0].aliases == ("b",)


def test_runs_are_packed_onto_gpus():
    from gstlab.executors import Resources, _slot_env, ray_options

    res = Resources(workers=6, threads=2, runs_per_gpu=3, gpus=2)
    assert [_slot_env(slot, res)["CUDA_VISIBLE_DEVICES"] for slot in range(6)] == ["0", "0", "0", "1", "1", "1"]
    assert _slot_env(0, res)["OMP_NUM_THREADS"] == "2"
    assert ray_options(res) == {"num_cpus": 2, "num_gpus": 1 / 3, "max_retries": 3, "retry_exceptions": False}
    assert "CUDA_VISIBLE_DEVICES" not in _slot_env(0, Resources(workers=2, gpus=0)) or os.environ.get(
        "CUDA_VISIBLE_DEVICES") is not None
    assert ray_options(Resources(threads=1))["num_gpus"] == 0


def test_a_run_that_names_its_gpu_is_refused_where_the_sweep_gives_each_run_one(tmp_path):
    from gstlab.executors import Resources, sweep

    raw = study(set={"train.device": "cuda:1"})
    with pytest.raises(C.ConfigError, match=r"^train.device: 'cuda:1' \(setting L\); a sweep gives each run its "
                                            r"GPU, so a run may not name one; allowed: auto, cuda or cpu$"):
        sweep(study_from_dict(raw), raw, tmp_path / "s", "local", Resources(workers=1, gpus=1), progress=False)
    assert not (tmp_path / "s").exists()


def test_a_ray_request_must_fit_one_node_and_defaults_to_one_thread():
    from gstlab.executors import Resources, default_threads, ray_options, unmet_request

    def node(cpus, gpus=0):  # a live node, as ray.nodes() lists it
        return {"Alive": True, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    assert default_threads("ray") == 1 and default_threads("local") == max(1, os.cpu_count() or 1)
    two_small = [node(1), node(1)]
    assert unmet_request(ray_options(Resources(threads=1)), two_small) is None
    assert unmet_request(ray_options(Resources(threads=2)), two_small) == (
        "--threads-per-worker 2: each run asks for 2 CPUs, which no node of the Ray cluster has (nodes: "
        "1 CPUs/0 GPUs, 1 CPUs/0 GPUs); ask for less or add a node that has them")
    assert unmet_request(ray_options(Resources(threads=2)), [node(1), node(4)]) is None
    gpu_share = ray_options(Resources(threads=2, runs_per_gpu=4, gpus=1))
    assert unmet_request(gpu_share, [node(8, gpus=1)]) is None
    assert "and 0.25 GPU (--gpus, --runs-per-gpu)" in unmet_request(gpu_share, [node(8), node(1, gpus=1)])
    assert "(nodes: none alive)" in unmet_request(ray_options(Resources()), [])


def test_ray_runs_no_live_node_can_hold_any_more_fail_instead_of_waiting(tmp_path, monkeypatch):
    from gstlab import executors

    class Task:
        def options(self, **_):
            return self

        def remote(self, *_):
            return object()  # a reference to a task that never starts

    class LostNode:  # Ray after the only node that held the request died: tasks wait, no live node fits
        def __init__(self):
            self.cancelled = []

        def remote(self, _fn):
            return Task()

        def wait(self, refs, num_returns, timeout):
            return [], refs

        def nodes(self):
            return [{"Alive": False, "Resources": {"CPU": 4}}, {"Alive": True, "Resources": {"CPU": 1}}]

        def cancel(self, ref, force):
            self.cancelled.append(ref)

    ray = LostNode()
    monkeypatch.setattr(executors, "connect_ray", lambda address, res: ray)
    runs = expand(study_from_dict(study(seeds=1)))
    outcomes = executors.run_ray(runs, tmp_path, executors.Resources(threads=2), "h:1", progress=False)
    assert [(o.run_id, o.status) for o in outcomes] == [(r.run_id, "failed") for r in runs] and len(ray.cancelled) == 2
    assert outcomes[0].detail.startswith("no live node of the Ray cluster can hold it any more; rerun the sweep")


def test_demo_is_three_figure2_presets_at_mini_scale():
    from gstlab.demo import METHODS, demo_study

    runs = expand(study_from_dict(demo_study(seed=7)))
    assert [r.setting for r in runs] == [preset for _, preset in METHODS]
    assert all(r.seed == 7 and r.cfg.train.epochs == 325 and r.cfg.data.image_size == 16 for r in runs)
    assert [r.cfg.pruning.side for r in runs[1:]] == ["smallest", "largest"] and not runs[0].cfg.pruning.layers


def test_the_demo_says_where_its_runs_were_computed(tmp_path):
    from gstlab.demo import computed_on, demo_study
    from gstlab.store import write_json

    machines = [{"cpu_isa": "AVX512", "aten_capability": "AVX2", "portable": True}] * 2 + [{"cpu_isa": "AVX2",
                                                                                             "aten_capability": "AVX2"}]
    for run, box in zip(expand(study_from_dict(demo_study(seed=3))), machines):
        (tmp_path / "runs" / run.run_id).mkdir(parents=True)
        write_json(tmp_path / "runs" / run.run_id / "manifest.json",
                   {"device_name": "CPU X", "torch_threads": 1, "versions": {"torch": "2.13.0+cpu"},
                    "git_commit": "0123456789", "machine": box})
    assert computed_on(tmp_path, seed=3) == [
        "computed on: CPU X (AVX512; AVX2 kernels, portable), 1 thread(s), torch 2.13.0+cpu, gstlab 0123456: 2 runs",
        "computed on: CPU X (AVX2; AVX2 kernels), 1 thread(s), torch 2.13.0+cpu, gstlab 0123456: 1 run"]


def test_a_ray_worker_refuses_a_run_whose_id_it_resolves_differently(tmp_path):
    from gstlab.executors import _ray_task

    threads = torch.get_num_threads()
    cfg = C.parse(TINY, ["train.device=cuda", "train.precision=auto"])  # bf16 wherever it runs: id names bf16
    planned_fp32 = C.run_id(C.replace(cfg, train=C.replace(cfg.train, precision="fp32")))
    with pytest.raises(RuntimeError, match="precision bf16"):
        _ray_task(C.to_dict(cfg), str(tmp_path / planned_fp32), 1)
    assert not (tmp_path / planned_fp32).exists() and torch.get_num_threads() == threads  # nothing touched


def test_a_ray_task_reports_what_ended_its_failed_run(tmp_path):
    from gstlab.executors import _ray_task

    cfg = C.parse(SMALL, ["optim.lr=1e30"])
    status, executed, detail = _ray_task(C.to_dict(cfg), str(tmp_path / C.run_id(cfg)), 1)
    assert (status, executed) == ("failed", True)
    assert detail == "diverged at epoch 0: training loss nan; see its summary.json"


def test_the_ray_executor_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` raises ImportError
    out = tmp_path / "s"
    args = ["sweep", str(write_study(tmp_path, study())), "--out", str(out), "--executor", "ray", "--no-progress"]
    assert main(args) == 2
    assert capsys.readouterr().err == "gst: error: --executor ray needs Ray: pip install 'gstlab[ray]'\n"
    assert not out.exists()


def test_two_settings_with_different_runs_under_one_label_are_refused(tmp_path):
    """The report groups by (arch, label): a preset used twice with different `set` would pool two settings."""
    study = write_study(tmp_path, {"name": "s", "seeds": 1,
                                   "settings": [{"inline": SMALL, "label": "a", "set": {"optim.lr": 0.002}},
                                                {"inline": SMALL, "label": "a"}]})
    with pytest.raises(C.ConfigError, match=r"settings\[1\]: label 'a' .* already used by settings\[0\]"):
        expand(load_study_file(study)[0])
    same = write_study(tmp_path, {"name": "s", "seeds": 1, "settings": [{"inline": SMALL, "label": "a"},
                                                                        {"inline": SMALL, "label": "a"}]}, "same.yaml")
    assert len(expand(load_study_file(same)[0])) == 1  # identical runs are one run, nothing pooled
    fig4 = expand(load_study_file(write_study(tmp_path, {"name": "s", "seeds": 1, "settings": [
        {"preset": "F4_18_0"}, {"preset": "F4_20_0"}]}, "f4.yaml"))[0])
    assert [r.label for r in fig4] == ["Prune_S 3%", "Prune_S 3%"]  # one label on two archs: the report splits them
    pooled = write_study(tmp_path, {"name": "s", "seeds": 1, "figure": "figure5", "settings": [
        {"preset": "F4_18_0"}, {"preset": "F4_20_0"}]}, "f5.yaml")  # Figure 5's report does not split by arch
    with pytest.raises(C.ConfigError, match=r"^settings\[1\]: label 'Prune_S 3%' is already used by settings\[0\]"):
        expand(load_study_file(pooled)[0])


def test_the_written_study_holds_its_config_files_and_expands_the_same_from_anywhere(tmp_path, monkeypatch):
    """A `config:` path is relative to the study file: the study.yaml a sweep writes (which the report's remedy
    command names) carries the files' content instead, so it expands to the same runs from its own folder."""
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "a.yaml").write_text(C.dump_yaml(C.parse(SMALL)))
    study = write_study(tmp_path, {"name": "s", "seeds": 2, "settings": [
        {"config": "settings/a.yaml"}, {"config": "settings/a.yaml", "label": "b", "set": {"optim.lr": 0.002}}]})
    out = tmp_path / "elsewhere" / "out"
    from gstlab.executors import Resources, sweep

    study_obj, raw = load_study_file(study)
    original = expand(study_obj)
    monkeypatch.setattr("gstlab.executors.write_index", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # stop right after study.yaml is written: nothing trains
        sweep(study_obj, raw, out, "local", Resources(workers=1), progress=False)
    monkeypatch.chdir(tmp_path.parent)
    written, data = load_study_file(out / "study.yaml")
    assert [r.run_id for r in expand(written)] == [r.run_id for r in original]
    assert [(r.setting, r.label) for r in expand(written)] == [(r.setting, r.label) for r in original]
    assert "config" not in str(data["settings"]) and data["settings"][1]["set"] == {"optim.lr": 0.002}
    from gstlab import safeyaml
    from gstlab.study import self_contained

    monkeypatch.setattr(safeyaml, "MAX_BYTES", len(self_contained(raw, study_obj)) - 1)  # too long to read back
    text = self_contained(raw, study_obj)
    assert len(text) <= safeyaml.MAX_BYTES and str(tmp_path / "settings" / "a.yaml") in text  # absolute paths
    (out / "study.yaml").write_text(text)
    assert [r.run_id for r in expand(load_study_file(out / "study.yaml")[0])] == [r.run_id for r in original]


def test_a_grid_axis_of_mappings_may_sit_beside_an_axis_on_another_field_of_that_section():
    base = {"name": "g", "seeds": 1, "settings": [{"inline": {"model": {"arch": "mlp"}}}]}
    for grid in ({"optim.momentum": [0.8, 0.9], "optim": [{"lr": 0.5}, {"lr": 0.05}]},
                 {"optim": [{"lr": 0.5}, {"lr": 0.05}], "optim.momentum": [0.8, 0.9]}):
        runs = expand(study_from_dict({**base, "grid": grid}))
        assert sorted((r.cfg.optim.lr, r.cfg.optim.momentum) for r in runs) == [
            (0.05, 0.8), (0.05, 0.9), (0.5, 0.8), (0.5, 0.9)]  # each point merges: four distinct runs
        assert len({r.run_id for r in runs}) == 4


def test_a_set_mapping_on_a_section_may_sit_beside_a_grid_on_another_field_of_it():
    base = {"name": "g", "seeds": 1, "settings": [{"inline": {"model": {"arch": "mlp"}}}],
            "grid": {"optim.momentum": [0.8, 0.9]}}
    runs = expand(study_from_dict({**base, "set": {"optim": {"lr": 0.01}}}))
    assert [(r.cfg.optim.lr, r.cfg.optim.momentum) for r in runs] == [(0.01, 0.8), (0.01, 0.9)]
    with pytest.raises(C.ConfigError, match=r"^set.optim: the study's grid varies optim.momentum"):
        study_from_dict({**base, "set": {"optim": {"momentum": 0.5}}})


def test_a_sweeps_set_mapping_keeps_the_files_other_keys_of_that_section_and_each_key_is_given_once(tmp_path, capsys):
    """``--set optim={lr: ..}`` had replaced the file's whole ``override: {optim: {...}}`` (momentum reset)."""
    path = write_study(tmp_path, study(override={"optim": {"lr": 0.1, "momentum": 0.5}}))
    s, _ = cli_study(["sweep", str(path), "--set", "optim={lr: 0.2}"])
    assert {(r.cfg.optim.lr, r.cfg.optim.momentum) for r in expand(s)} == {(0.2, 0.5)}
    for flags, message in ((["--set", "optim.lr=0.1", "--set", "optim.lr=0.2"], "--set optim.lr: given twice"),
                           (["--set", "optim.lr=0.1", "--set", "optim={lr: 0.2}"], "keys 'optim.lr' and 'optim' both")):
        assert main(["sweep", str(path), "--dry-run", *flags]) == 2
        assert message in capsys.readouterr().err


def cli_study(argv: list[str]):
    from gstlab.cli import _study_from_args, build_parser

    return _study_from_args(build_parser().parse_args(argv))


def test_a_studys_own_threads_replaced_by_the_sweeps_threads_per_worker_are_said():
    from gstlab.executors import Resources, threads_notes

    runs = expand(study_from_dict(study(set={"train.threads": 1})))
    assert threads_notes(runs, Resources(threads=1)) == []
    assert threads_notes(runs, Resources(threads=2)) == [  # each run's threads had been replaced silently
        "setting 'L': its train.threads 1 is replaced by the sweep's 2 thread(s) per run (--threads-per-worker; "
        "default: all cores locally, 1 on Ray)",
        "setting 'S': its train.threads 1 is replaced by the sweep's 2 thread(s) per run (--threads-per-worker; "
        "default: all cores locally, 1 on Ray)"]


def test_a_settings_own_seed_is_said_to_be_replaced_by_the_studys(tmp_path, capsys):
    """A config gstlab wrote holds its run's seed, so one pasted into a setting is common: each run takes the
    study's seed instead, and the sweep says so once (it had been replaced silently; an audit, 2026-12-06)."""
    data = study(settings=[{"inline": {**SMALL, "seed": 7}, "label": "L"}])
    assert [r.cfg.seed for r in expand(study_from_dict(data))] == [0, 1]
    assert main(["sweep", str(write_study(tmp_path, data)), "--dry-run"]) == 0
    assert capsys.readouterr().err.count("setting 'L': its config's seed 7 is replaced by each of the study's") == 1



def test_a_scale_no_preset_setting_reads_is_said_to_be_unused():
    """``scale:`` picks the size of preset settings only; beside config or inline settings it changed nothing and
    was printed in the report as if it had (an audit, 2026-12-06): said, not refused."""
    note = "scale: 'paper' is read only by preset settings and this study has none"
    assert note in " ".join(setting_notes(study_from_dict(study(scale="paper"))))
    assert not setting_notes(study_from_dict(study()))  # no scale given
    with_preset = study(scale="paper", settings=[{"preset": "F2_VGG_0"}])
    assert not setting_notes(study_from_dict(with_preset))


def test_a_grid_axis_named_as_an_index_column_is_refused():
    """index.csv writes each grid value under its axis name beside its own columns: an axis `intervention` had
    overwritten the intervention column, and the Figure 5 report then dropped its panels without a word."""
    data = study(grid={"intervention": [{"kind": "none"}, {"kind": "zero", "batches": 2}]})
    with pytest.raises(C.ConfigError, match=r"^grid.intervention: an axis named as a column of index.csv would "
                                            r"overwrite it; allowed: its fields as dotted keys \(e.g. interven"):
        study_from_dict(data)

def test_a_sweep_says_when_finished_runs_lack_epochs_it_now_asks_to_keep(tmp_path, capsys):
    """keep_checkpoints is outside the run id: a second sweep asking for more skips the finished runs, and had
    said nothing (their warning came only from a run that executes; found by a review, 2026-12-06)."""
    path = write_study(tmp_path, study(seeds=1, settings=[{"inline": SMALL, "label": "L"}]))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--set", "train.keep_checkpoints=[1]"]) == 0
    assert "train.keep_checkpoints: 1 finished run(s) lack epochs the study asks to keep" in capsys.readouterr().err
