"""CPU speed-ups that must not change a number: the evaluation max-pool and the foreach optimizer update are
bit-identical to PyTorch's defaults (issue 25)."""

import os
import shutil

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


def test_study_estimates_use_the_rates_they_are_given():
    from gstlab.experiments import studies

    reference = studies.MINI_IMAGES_PER_CPU_S
    # F2_VGG_4 at mini: 325 epochs x 2,000 images at 5,000/s + (325 + 19 events) x 2,000 at 19,960/s + 10 s
    # start-up + one flatness probe (50 s on the machine of the reference rates)
    assert studies.run_seconds("F2_VGG_4", "mini", reference) == pytest.approx(130 + 344 * 2000 / 19960 + 10 + 50)
    half = {k: (t / 2, e / 2) for k, (t, e) in reference.items()}
    slow = studies.run_seconds("F2_VGG_4", "mini", half) - 10  # the probe costs twice as much, too
    assert slow == pytest.approx(2 * (studies.run_seconds("F2_VGG_4", "mini", reference) - 10))
    # 6 settings x 10 seeds on 2 workers; the 10 s start-up per run does not scale
    assert studies.estimate_minutes("fig2_vgg", "mini", half) == pytest.approx(
        2 * studies.estimate_minutes("fig2_vgg", "mini", reference) - 6 * 10 * 10 / 60 / 2)


def test_study_estimates_simulate_the_sweeps_pool():
    from gstlab.experiments import studies
    from gstlab.study import expand, study_from_dict

    reference = studies.MINI_IMAGES_PER_CPU_S
    # Figure 3 at smoke: 21 settings x 1 seed, but settings coincide there: the sweep makes 9 runs
    runs = [studies.cfg_seconds(r.cfg, reference) for r in expand(study_from_dict(studies.study_dict("fig3",
                                                                                                      "smoke")))]
    assert len(runs) == 9
    assert studies.estimate_minutes("fig3", "smoke", reference, workers=1) == pytest.approx(sum(runs) / 60)
    assert studies.estimate_minutes("fig3", "smoke", reference, workers=9) == pytest.approx(max(runs) / 60)
    # 9 runs of ~10 s on 2 workers: 5 runs on one of them, not 4.5 (the CPU time halved)
    two = studies.estimate_minutes("fig3", "smoke", reference, workers=2)
    assert two == pytest.approx(studies.pool_seconds(runs, 2) / 60) and two > sum(runs) / 2 / 60 + 4 / 60


def test_calibration_measures_once_per_machine_and_reuses_the_cache(tmp_path, monkeypatch):
    from gstlab.experiments import calibration

    calls = []
    monkeypatch.setattr(calibration, "measure", lambda arch, width: calls.append((arch, width)) or (100.0, 400.0))
    path = tmp_path / "calibration.json"
    models = [("vgg11_bn", 1.0), ("resnet20", 1.0)]
    rates, line = calibration.cached_rates(models, path)
    assert rates == {m: (100.0, 400.0) for m in models} and calls == models
    assert calibration.machine_key() in line and str(path) in line
    assert calibration.cached_rates(models, path)[0] == rates and len(calls) == 2  # from the cache
    calibration.cached_rates([*models, ("resnet56", 1.0)], path)
    assert calls[2:] == [("resnet56", 1.0)]  # only the missing model
    path.write_text("{not json")
    assert calibration.cached_rates(models, path)[0] == rates and len(calls) == 5  # damaged cache: measured again


def test_calibration_measures_a_real_rate():
    from gstlab.experiments import calibration

    train, evaluate = calibration.measure("vgg11_bn", 0.0625)
    assert 0 < train < evaluate  # a training step costs more per image than an evaluation


SMALL = {"data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 1024, "synthetic_test": 512},
         "model": {"arch": "mlp", "hidden": [64, 48]}, "optim": {"milestones": [20]},
         "train": {"epochs": 30, "batch_size": 32, "eval_batch_size": 128},
         "pruning": {"criterion": "l2", "period": 2,
                     "layers": [{"name": "fc1", "fraction": 0.5, "start": 1, "end": 21}]}}


def test_any_run_is_estimated_from_its_own_data_sizes_schedule_and_calibrated_model(tmp_path, monkeypatch):
    from gstlab.experiments import calibration, studies

    cfg = C.parse(SMALL)
    # 30 epochs x 1,024 images at 1,000/s + (30 + 11 events: epochs 1, 3, ..., 21) x 512 at 4,000/s + 10 s start-up
    assert studies.config_seconds(cfg, 1000.0, 4000.0, 1.0) == pytest.approx(30.72 + 41 * 512 / 4000 + 10)
    # resumed after 20 epochs: 10 epochs and the one event left (epoch 21), and the start-up again
    assert studies.config_seconds(cfg, 1000.0, 4000.0, 1.0, done=20) == pytest.approx(10.24 + 11 * 512 / 4000 + 10)
    probed = C.parse(SMALL, ["probes.epochs=[25]", "probes.samples=256"])  # half of PROBE_S's 512 samples, 3x slower
    assert studies.config_seconds(probed, 1000.0, 4000.0, 3.0) == pytest.approx(
        studies.config_seconds(cfg, 1000.0, 4000.0, 1.0) + studies.PROBE_S * 3 / 2)
    calls = []
    monkeypatch.setattr(calibration, "measure_spec", lambda key: calls.append(key) or (1000.0, 4000.0))
    monkeypatch.setattr(calibration, "CACHE", tmp_path / "calibration.json")
    wider = C.parse(SMALL, ["model.hidden=[128,48]"])
    supplied = C.parse({**SMALL, "model": {"supplied": "abc"}})  # a model given from Python: no estimate
    seconds, unknown, line = studies.study_estimate([cfg, cfg, wider, supplied])
    assert len(calls) == 2 and unknown == 1 and str(tmp_path) in line  # one calibration per distinct model
    assert seconds == pytest.approx(3 * studies.config_seconds(cfg, 1000.0, 4000.0, 5000.0 / 1000.0))
    assert studies.study_estimate([cfg])[0] == pytest.approx(seconds / 3) and len(calls) == 2  # from the cache


def test_a_dry_run_estimates_the_runs_not_yet_done_on_this_machine(tmp_path, monkeypatch, capsys):
    import yaml

    from gstlab.cli import main
    from gstlab.experiments import calibration

    monkeypatch.setattr(calibration, "measure_spec", lambda key: (1000.0, 4000.0))
    monkeypatch.setattr(calibration, "CACHE", tmp_path / "calibration.json")
    from gstlab.experiments import studies
    from gstlab.study import expand, load_study_file

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "seeds": 2, "settings": [{"inline": SMALL, "label": "a"}]}))
    started = tmp_path / "s" / "runs" / expand(load_study_file(study)[0])[0].run_id
    started.mkdir(parents=True)
    (started / "metrics.csv").write_text("epoch\n" + "".join(f"{e}\n" for e in range(20)))  # cut off after 20
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(["sweep", str(study), "--dry-run", "--workers", "2", "--threads-per-worker", "1",
                 "--out", str(tmp_path / "s")]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    seconds = [studies.config_seconds(C.parse(SMALL), 1000.0, 4000.0, 5.0, done) for done in (20, 0)]
    minutes = sum(seconds) / 60
    assert last.startswith(f"estimate: 2 runs to do (1 of them started, counted from their last checkpoint), "
                           f"~{minutes:,.0f} CPU min, ~{seconds[1] / 60:,.0f} min on 2 workers (each run on one "
                           f"core)")  # two runs side by side: the longer one's minutes
    assert calibration.machine_key() in last
    assert main(["sweep", str(study), "--dry-run", "--workers", "4", "--threads-per-worker", "2",
                 "--out", str(tmp_path / "s")]) == 0  # 4 processes share 2 cores: as 2 at a time
    assert f"~{seconds[1] / 60:,.0f} min on 4 workers, 2 at a time on this machine's cores (each run on one core; " \
           f"its 2 threads not counted)" in capsys.readouterr().out
    assert main(["sweep", str(study), "--dry-run", "--workers", "1", "--out", str(tmp_path / "s")]) == 0
    assert f"~{minutes:,.0f} min on 1 worker (each run on one core; its 2 threads" in capsys.readouterr().out
    assert main(["sweep", str(study), "--dry-run", "--workers", "9", "--out", str(tmp_path / "s")]) == 2
    assert "--workers: 9 asked but this machine has 2 CPU cores" in capsys.readouterr().err  # as the sweep says
    assert studies.pool_seconds([3.0, 1.0, 1.0, 1.0, 2.0], 2) == 5.0  # 3 | 1+1+1, both free at 3, then 2
    assert studies.pool_seconds([1.0, 1.0, 4.0, 1.0], 2) == 5.0  # 1+4 | 1+1: in the order handed out, not sorted
    assert studies.pool_seconds([], 3) == 0.0
    shutil.rmtree(started)  # none started: nothing to say about checkpoints
    assert main(["sweep", str(study), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("estimate: 2 runs to do, ~")
