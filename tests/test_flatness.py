"""Flatness in a run and on a saved checkpoint: values against the dense Hessian, masks, seeds, bad input."""

import csv
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gstlab import config as C
from gstlab.cli import main
from gstlab.flatness import ProbeError, delta_w, eps_grid, measure
from gstlab.measures import prunability
from gstlab.models.units import units_from_names
from gstlab.pruning.masks import UnitMasks
from gstlab.runner import execute
from test_runner import TINY

PROBES = {"top_k": 4, "samples": 48, "grad_moment": True, "eps_directions": 2, "eps_max": 0.2, "eps_step": 0.05,
          "trace_samples": 8}


def tiny_pruned_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    masks = UnitMasks(net, units_from_names(net, ["0"]))
    masks.prune("0", torch.tensor([1, 4]))
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    return net, masks, x, y


def dense_surviving_hessian(net, masks, x, y) -> torch.Tensor:
    params = list(net.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().flatten() for p in params])

    def loss(theta):
        chunks, i = [], 0
        for s in shapes:
            chunks.append(theta[i:i + s.numel()].view(s))
            i += s.numel()
        out = torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], chunks)), (x,))
        return F.cross_entropy(out, y)

    h = torch.autograd.functional.hessian(loss, flat)
    keep = torch.cat([masks.param_masks().get(n, torch.ones_like(p, dtype=torch.bool)).flatten()
                      for n, p in net.named_parameters()])
    return h[keep][:, keep]


def test_measure_matches_the_dense_hessian_of_the_surviving_parameters():
    net, masks, x, y = tiny_pruned_mlp()
    cfg = C.ProbeConfig(top_k=3, samples=30, trace_samples=0, eps_directions=0)
    row, eps_rows = measure(net, masks, x, y, cfg, seed=0, eval_batch_size=16)
    exact = torch.linalg.eigvalsh(dense_surviving_hessian(net, masks, x, y).double()).flip(0)[:3]
    got = torch.tensor([float(v) for v in row["eigenvalues"].split()], dtype=torch.float64)
    assert torch.allclose(got, exact, rtol=1e-4, atol=1e-6)
    assert row["eig_sum"] == pytest.approx(float(exact.sum()), rel=1e-4)
    assert row["n_hvp"] > 0 and eps_rows == []
    grads = [torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), list(net.parameters()))
             for i in range(len(x))]
    keep = [masks.param_masks().get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in net.named_parameters()]
    moment = sum(sum(float((g[k] ** 2).sum()) for g, k in zip(gs, keep)) for gs in grads) / len(x)
    assert row["grad_moment_trace"] == pytest.approx(moment, rel=1e-5)  # surviving entries only
    assert row["tic"] == pytest.approx(row["grad_moment_trace"] / row["eig_sum"], rel=1e-12)


def test_same_seed_same_row_and_eps_sweep_restores_the_model():
    net, masks, x, y = tiny_pruned_mlp()
    before = [p.detach().clone() for p in net.parameters()]
    cfg = C.ProbeConfig(top_k=2, samples=30, trace_samples=4, eps_directions=2, eps_max=0.1, eps_step=0.05)
    a, eps_a = measure(net, masks, x, y, cfg, seed=3)
    b, eps_b = measure(net, masks, x, y, cfg, seed=3)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b and eps_a == eps_b
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))
    assert len(eps_a) == 2 * 5 and {r["eps"] for r in eps_a} == set(eps_grid(0.1, 0.05))


def test_eps_sweep_has_its_own_evaluation_set_the_whole_one_by_default():
    net, masks, x, y = tiny_pruned_mlp()
    cfg = C.ProbeConfig(top_k=2, samples=10, trace_samples=0, grad_moment=False, eps_directions=1, eps_max=0.1,
                        eps_step=0.1)
    row, eps_rows = measure(net, masks, x, y, cfg, seed=0)
    exact = torch.linalg.eigvalsh(dense_surviving_hessian(net, masks, x[:10], y[:10]).double()).flip(0)[:2]
    got = torch.tensor([float(v) for v in row["eigenvalues"].split()], dtype=torch.float64)
    assert torch.allclose(got, exact, rtol=1e-4, atol=1e-6)  # the Hessian: the first 10 examples
    assert (row["samples"], row["eps_samples"]) == (10, 30)
    assert eps_rows[0]["base_loss"] == pytest.approx(float(F.cross_entropy(net(x), y).detach()), rel=1e-6)  # all 30
    at_zero = next(r for r in eps_rows if r["eps"] == 0.0)
    assert at_zero["loss"] == pytest.approx(eps_rows[0]["base_loss"], rel=1e-12)
    row20, eps20 = measure(net, masks, x, y, C.replace(cfg, eps_samples=20), seed=0)
    assert row20["eps_samples"] == 20 and row20["eigenvalues"] == row["eigenvalues"]
    assert eps20[0]["base_loss"] == pytest.approx(float(F.cross_entropy(net(x[:20]), y[:20]).detach()), rel=1e-6)


def test_delta_w_is_the_smallest_eps_with_worst_case_increase_of_point_one():
    rows = [{"eps": e, "loss": 1.0 + inc} for e, inc in [(-0.1, 0.05), (0.1, 0.02), (-0.2, 0.08), (0.2, 0.12),
                                                         (0.3, 0.3)]]
    assert delta_w(rows, base_loss=1.0) == 0.2
    assert delta_w(rows[:3], base_loss=1.0) != delta_w(rows[:3], base_loss=1.0)  # NaN: never reached


def test_each_row_says_whether_its_solver_converged_and_a_capped_one_underestimates():
    net, masks, x, y = tiny_pruned_mlp()
    exact = torch.linalg.eigvalsh(dense_surviving_hessian(net, masks, x, y).double()).flip(0)[:3]
    cfg = C.ProbeConfig(top_k=3, samples=30, trace_samples=0, eps_directions=0, grad_moment=False)
    row, _ = measure(net, masks, x, y, cfg, seed=0)
    assert row["converged"] is True and row["max_rel_residual"] <= 1e-6
    capped, _ = measure(net, masks, x, y, C.replace(cfg, max_iter=3), seed=0)
    # Ritz values interlace: after 3 steps each of the top 3 is at most the true one (here strictly below)
    assert capped["converged"] is False and capped["max_rel_residual"] > 1e-3 and capped["n_hvp"] == 3
    assert capped["eig_sum"] < float(exact.sum()) - 1e-6
    power, _ = measure(net, masks, x, y, C.replace(cfg, method="power", max_iter=2), seed=0)
    assert power["converged"] is False and power["n_hvp"] == 3 * 2 and math.isnan(power["max_rel_residual"])
    assert measure(net, masks, x, y, C.replace(cfg, method="power", max_iter=1000), seed=0)[0]["converged"] is True


def test_probe_settings_that_cannot_mean_what_they_say_are_refused():
    for probes, field in (({"trace_samples": -1}, "probes.trace_samples: must be >= 0"),
                          ({"eps_directions": -2}, "probes.eps_directions: must be >= 0"),
                          ({"top_k": 2, "eps_directions": 5}, "probes.eps_directions: at most probes.top_k (2)"),
                          ({"eps_max": 0.1, "eps_step": 0.3}, "probes.eps_step: must be <= probes.eps_max (0.1)"),
                          ({"top_k": 5, "max_iter": 4}, "probes.max_iter: Lanczos needs at least probes.top_k (5)"),
                          ({"max_iter": 0}, "probes.max_iter: must be >= 1 or null")):
        with pytest.raises(C.ConfigError, match=f"^{re.escape(field)}"):
            C.parse({"probes": {"at_end": True, **probes}})
    assert C.parse({"probes": {"top_k": 5, "max_iter": 2, "method": "power"}}).probes.max_iter == 2  # per eigenpair


def test_eps_grid_stays_within_eps_max():
    assert eps_grid(0.5, 0.3) == [-0.3, 0.0, 0.3]
    assert eps_grid(0.4, 0.15) == [-0.3, -0.15, 0.0, 0.15, 0.3]
    grid = eps_grid(0.4, 0.01)
    assert len(grid) == 81 and grid[0] == -0.4 and grid[-1] == 0.4  # the paper's grid: the quotient rounds down
    assert eps_grid(0.3, 0.1) == [-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3]  # 0.3 / 0.1 = 2.9999999999999996


def test_a_non_finite_loss_is_a_loss_increase_and_a_diverged_model_is_not_measured():
    rows = [{"eps": 0.1, "loss": math.nan}, {"eps": -0.2, "loss": 5.0}]
    assert delta_w(rows, base_loss=1.0) == 0.1  # the model broke at 0.1
    net, masks, x, y = tiny_pruned_mlp()
    with torch.no_grad():
        net[2].weight[0, 0] = math.nan
    cfg = C.ProbeConfig(top_k=2, samples=30, trace_samples=0, eps_directions=0)
    for method in ("lanczos", "power"):
        with pytest.raises(ProbeError, match=r"^the model's loss on the probe set is nan \(diverged weights\?\)"):
            measure(net, masks, x, y, C.replace(cfg, method=method), seed=0)
    got = prunability(net, x, y, delta=0.1, batch_size=16)
    assert math.isnan(got["prunability"]) and got["prunability_evals"] == 0  # no threshold: not 1.0 (nothing passes)


def probing_config(tmp_path):
    data = C.to_dict(C.parse(TINY, ["train.epochs=4", "pruning.layers.0.end=3", "pruning.layers.1.end=3"]))
    data["probes"] = {**PROBES, "epochs": [1], "at_end": True}
    path = tmp_path / "cfg.yaml"
    path.write_text(C.dump_yaml(C.parse(data)))
    return path


def test_run_writes_curvature_rows_at_scheduled_epochs_and_cli_measures_the_checkpoint(tmp_path, capsys):
    cfg_path = probing_config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "curvature.csv").open()))
    assert [(r["epoch"], r["trigger"]) for r in rows] == [("1", "epoch"), ("3", "end")]
    assert all(int(r["n_hvp"]) > 0 and len(r["eigenvalues"].split()) == 4 for r in rows)
    # 28 Lanczos steps (the default cap for k = 4) leave a relative Ritz residual above 1e-6: recorded as such
    assert [r["converged"] for r in rows] == ["False", "False"] and all(float(r["max_rel_residual"]) > 1e-6
                                                                         for r in rows)
    eps = list(csv.DictReader((out / "eps_sweep.csv").open()))
    assert len(eps) == 2 * 2 * 9  # 2 probes x 2 directions x 9 eps values
    assert main(["flatness", str(out), "--top-k", "4", "--no-progress"]) == 0
    again = list(csv.DictReader((out / "flatness.csv").open()))[0]
    # the CLI on the final model reproduces the in-run measurement at the end (same seed, same probe set)
    for key in ("eig_sum", "grad_moment_trace", "delta_w", "n_hvp"):
        assert float(again[key]) == pytest.approx(float(rows[-1][key]), rel=1e-6, nan_ok=True)



def test_flatness_measures_with_the_runs_threads_and_restores_the_process_count(tmp_path, monkeypatch):
    from gstlab import remeasure

    out = tmp_path / "run"
    assert main(["run", "--config", str(probing_config(tmp_path)), "--out", str(out), "--no-progress",
                 "--set", "train.threads=1"]) == 0
    seen, real = [], remeasure.measure
    monkeypatch.setattr(remeasure, "measure", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["flatness", str(out), "--top-k", "4", "--no-progress"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

def test_a_probe_that_cannot_be_measured_ends_the_run_as_failed_after_its_epoch(tmp_path, monkeypatch, capsys):
    import gstlab.flatness  # noqa: PLC0415

    real = gstlab.flatness.measure

    def nan_at_the_end(model, masks, x, y, cfg, **kw):  # the epoch-1 probe measures; the end probe cannot
        if len(calls := getattr(nan_at_the_end, "calls", [])) == 1:
            raise ProbeError("the model's loss on the probe set is nan (diverged weights?)")
        nan_at_the_end.calls = [*calls, 1]
        return real(model, masks, x, y, cfg, **kw)

    monkeypatch.setattr(gstlab.flatness, "measure", nan_at_the_end)
    out = tmp_path / "run"
    assert main(["run", "--config", str(probing_config(tmp_path)), "--out", str(out), "--no-progress"]) == 1
    assert "failure: epoch callback FlatnessProbe ended the run after epoch 3: end probe: the model's loss" in (
        capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure"].startswith("epoch callback FlatnessProbe ended")
    assert [r["epoch"] for r in csv.DictReader((out / "metrics.csv").open())] == ["0", "1", "2", "3"]
    assert [r["epoch"] for r in csv.DictReader((out / "curvature.csv").open())] == ["1"]
    final = torch.load(out / "model_final.pt", weights_only=True)
    assert final["epoch"] == 3 and "diverged" not in final  # the weights are fine; the probe could not measure
    assert not (out / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert execute(C.parse(C.load_yaml(out / "config.yaml")), out) == summary  # final: not run again


def test_flatness_bad_input_exits_2(tmp_path, capsys):
    cfg_path = probing_config(tmp_path)
    out = tmp_path / "run"
    execute(C.parse(C.load_yaml(cfg_path)), out)
    assert main(["flatness", str(out), "--top-k", "100000"]) == 2
    assert "probes.top_k" in capsys.readouterr().err
    assert main(["flatness", str(out), "--top-k", "1"]) == 2  # the run sweeps 2 directions
    assert capsys.readouterr().err == ("gst: error: --top-k 1: the run sweeps 2 eps directions, one per eigenvector; "
                                       "allowed: --top-k >= 2, or add --eps-directions D with D <= 1\n")
    for delta in ("nan", "inf", "-1"):  # command-line values get a config file's checks
        assert main(["flatness", str(out), "--prunability", f"--prunability-delta={delta}"]) == 2
        assert "probes.prunability_delta" in capsys.readouterr().err
    assert main(["flatness", str(out), "--epoch", "2"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    for flags, message in (  # a setting of a measurement not made was accepted and ignored
            (["--prunability-delta", "0.5"], "--prunability-delta: prunability is not measured"),
            (["--prunability-samples", "10"], "--prunability-samples: prunability is not measured"),
            (["--pac-bayes-draws", "3"], "--pac-bayes-draws: PAC-Bayes flatness is not measured"),
            (["--pac-bayes", "--pac-bayes-drop", "0"], "probes.pac_bayes_drop: 0.0; allowed: accuracy points"),
            (["--sharpness-steps", "3"], "--sharpness-steps: adaptive sharpness is not measured"),
            (["--sharpness", "--sharpness-rho", "0"], "probes.sharpness_rho: 0.0; allowed: a radius in [0.0001, 100]"),
            (["--eps-directions", "0", "--eps-samples", "10"], "--eps-samples: no eps directions are swept")):
        assert main(["flatness", str(out), *flags, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (out / "flatness.csv").exists()
    for where, what in ((tmp_path, "not a run directory (no config.yaml)"), (tmp_path / "none", "no such directory"),
                        (out / "model_final.pt", "not a directory; give the run directory that holds model_final.pt")):
        assert main(["flatness", str(where)]) == 2
        assert capsys.readouterr().err.startswith(f"gst: error: {where}: {what}")
    assert main(["flatness", str(out), "--device", "cuda"]) == 2  # the suite hides any GPU (tests/conftest.py)
    assert capsys.readouterr().err == ("gst: error: --device: 'cuda' requested but CUDA is not available; allowed "
                                       "here: auto, cpu\n")
    with pytest.raises(SystemExit):
        main(["flatness", str(out), "--device", "gpu"])
    assert "argument --device: unknown device 'gpu'; allowed: auto, cpu, cuda, cuda:N, mps" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, out / "model_final.pt")
    assert main(["flatness", str(out)]) == 2
    assert "not a gstlab" in capsys.readouterr().err
    (out / "model_final.pt").write_bytes(b"not a checkpoint")
    assert main(["flatness", str(out)]) == 2
    with pytest.raises(SystemExit) as exit_:  # argparse refuses a non-positive count (exit status 2)
        main(["flatness", str(tmp_path / "run"), "--samples", "0"])
    assert exit_.value.code == 2 and "--samples: expected an integer >= 1" in capsys.readouterr().err


def test_flatness_help_says_the_defaults_come_from_the_runs_probes(capsys):
    with pytest.raises(SystemExit):
        main(["flatness", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in ("probes.prunability_delta", "probes.prunability_samples", "probes.eps_samples"):
        assert f"default: the run's {field}" in text


def test_a_lanczos_basis_beyond_half_the_memory_is_refused_before_it_is_allocated(monkeypatch):
    from gstlab import flatness

    net, masks, x, y = tiny_pruned_mlp()
    cfg = C.ProbeConfig(top_k=3, samples=30, trace_samples=0, eps_directions=0, max_iter=40)
    monkeypatch.setattr(flatness, "device_memory", lambda device: 1000)  # bytes
    with pytest.raises(ProbeError, match=r"^probes.max_iter: a Lanczos basis of \d+ parameters x \d+ steps needs"):
        measure(net, masks, x, y, cfg, seed=0)
    assert measure(net, masks, x, y, C.replace(cfg, method="power", max_iter=5), seed=0)[0]["k"] == 3  # no basis


def test_a_run_whose_lanczos_basis_would_not_fit_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from gstlab import flatness

    monkeypatch.setattr(flatness, "device_memory", lambda device: 1000)  # bytes
    out = tmp_path / "run"
    assert main(["run", "--config", str(probing_config(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gst: error: probes.max_iter: a Lanczos basis of ")
    assert not out.exists()  # refused before the run directory is written
    path = tmp_path / "power.yaml"
    path.write_text(C.dump_yaml(C.parse(C.load_yaml(probing_config(tmp_path)), ["probes.method=power"])))
    assert main(["run", "--config", str(path), "--out", str(out), "--no-progress"]) == 0  # no basis to keep


def test_gst_flatness_has_a_flag_for_every_setting_of_an_optional_measurement():
    from gstlab.cli import _measure_settings

    flags = {flag for flag, *_ in _measure_settings()}
    assert flags == {f"--{key.replace('_', '-')}" for _, settings in C.OPTIONAL_MEASURES.values() for key in settings}
