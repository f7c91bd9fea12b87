"""The code paths that depend on where tensors live, on the device GSTLAB_TEST_DEVICE names (default: cpu).

They run on the CPU in every suite and again on a GPU with ``GSTLAB_TEST_DEVICE=cuda python -m pytest
tests/test_device.py`` (tests/conftest.py). Each compares with a truth computed on the CPU (a dense float64
Hessian, the units a criterion's scores select) or with an exact invariant (weights restored bit for bit, the
units events name = the units masked), so a tensor left on the wrong device fails like a wrong number. A GPU run
is not bit-deterministic, so nothing here compares a GPU run with a CPU run of the same config."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE
from gstlab import config as C
from gstlab import runner
from gstlab.cli import main
from gstlab.curvature import (
    HessianOperator,
    eps_sweep,
    hutchinson_trace,
    lanczos,
    per_example_grad_moment,
    power_iteration,
)
from gstlab.registry import datasets
from gstlab.runner import execute, prepare
from test_curvature import (
    dense_hessian,
    explicit_moment,
    hidden_mask,
    single_thread,  # noqa: F401  (autouse: tiny problems run faster on one thread)
    tiny_data,
    tiny_mlp,
    top,
)
from test_fast_path import CONV
from test_interventions import BASE, IDX, train_steps
from test_registry import CFG as REGISTERED_CFG
from test_registry import (
    load_blobs,
    registered,  # noqa: F401  (fixture)
)
from test_runner import interrupt_at

if DEVICE != "cpu" and not torch.cuda.is_available():
    pytest.fail(f"GSTLAB_TEST_DEVICE={DEVICE}, but torch sees no GPU", pytrace=False)

ON_DEVICE = [f"train.device={DEVICE}"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def masked_units(run_dir, unit_of_module: dict[str, str] | None = None) -> dict[str, set[int]]:
    """The units the saved model has masked, per prunable layer (named by ``unit_of_module`` where given)."""
    state = torch.load(run_dir / "model_final.pt", weights_only=True, map_location="cpu")["model"]
    masked = {k.removesuffix(".unit_mask"): set((v == 0).nonzero().flatten().tolist())
              for k, v in state.items() if k.endswith("unit_mask") and bool((v == 0).any())}
    return {(unit_of_module or {}).get(module, module): units for module, units in masked.items()}


def units_named(run_dir) -> dict[str, set[int]]:
    named: dict[str, set[int]] = {}
    for event in read_csv(run_dir / "events.csv"):
        named.setdefault(event["layer"], set()).update(int(u) for u in event["units"].split())
    return named


def test_curvature_on_the_device_matches_the_dense_hessian():
    model, (x, y) = tiny_mlp(), tiny_data()
    masks = hidden_mask(model, dead=[1])
    h = dense_hessian(model, x, y, masks)  # the truth, on the CPU
    moment = explicit_moment(model, x, y, masks)
    model, x, y = model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)
    masks = {k: v.to(DEVICE) for k, v in masks.items()}
    op = HessianOperator(model, F.cross_entropy, x, y, masks=masks, batch_size=7)
    vals, vecs = lanczos(op, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(vals, top(h, 3), rtol=1e-4, atol=0)
    assert vecs.device.type == torch.device(DEVICE).type
    vals, _ = power_iteration(op, 2, torch.Generator().manual_seed(0), max_iter=5000, tol=1e-12)
    torch.testing.assert_close(vals, top(h, 2), rtol=1e-4, atol=0)
    est, stderr = hutchinson_trace(op, 200, torch.Generator().manual_seed(0))
    assert abs(est - float(torch.diagonal(h).sum())) <= 4 * stderr
    got = per_example_grad_moment(model, F.cross_entropy, x, y, masks, batch_size=6)
    for a, b in zip(got, moment):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps_sweep(model, F.cross_entropy, x, y, op.flat_to_params(vecs[:, 0]), [0.0, 0.5, 1.0], batch_size=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_criterion_that_scores_on_the_cpu_prunes_a_model_on_the_device(registered, tmp_path):  # noqa: F811
    assert execute(C.parse(REGISTERED_CFG, ON_DEVICE), tmp_path / "run")["status"] == "finished"
    assert masked_units(tmp_path / "run") == {"hidden": set(range(8, 16))}  # the highest indices, as scored


def test_a_registered_data_set_on_the_device_gets_label_noise_and_trains(registered, tmp_path):  # noqa: F811
    datasets.register("blobs_on_device", lambda cfg: (tuple(t.to(DEVICE) for t in load_blobs(cfg)[0]), 2))
    try:
        cfg = C.parse(REGISTERED_CFG, [*ON_DEVICE, "data.name=blobs_on_device", "data.label_noise=0.25"])
        assert execute(cfg, tmp_path / "run")["status"] == "finished"
    finally:
        datasets.unregister("blobs_on_device")
    assert len(read_csv(tmp_path / "run" / "label_noise.csv")) == 16  # a quarter of the 64 training labels


@pytest.mark.parametrize("criterion", ["l1", "l2", "ebn", "activation", "random"])
def test_every_criterion_prunes_on_the_device_and_events_name_the_masked_units(tmp_path, criterion):
    out = tmp_path / "run"
    assert execute(C.parse(BASE, [*ON_DEVICE, f"pruning.criterion={criterion}"]), out)[
        "status"] == "finished"
    named = units_named(out)
    assert named == masked_units(out) and len(named["fc1"]) == 16  # half of fc1's 32 units


def test_an_activation_run_killed_on_the_device_resumes_there(tmp_path, monkeypatch):
    """The activation scores come back from the checkpoint on the CPU; the next counted batch adds the device's."""
    cfg = C.parse(BASE, [*ON_DEVICE, "pruning.criterion=activation"])
    real = interrupt_at(monkeypatch, 3)  # cut before epoch 3: the event of epoch 1 and its scores are saved
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, tmp_path / "run")
    monkeypatch.setattr(runner, "run_epoch", real)
    assert execute(cfg, tmp_path / "run")["status"] == "finished"
    assert units_named(tmp_path / "run") == masked_units(tmp_path / "run")


def test_a_zeroing_window_restores_the_weights_bit_for_bit_on_the_device(tmp_path):
    run = prepare(C.parse(BASE | {"intervention": {"kind": "zero_restore", "batches": 3}}, ON_DEVICE),
                  tmp_path / "run")
    run.pruner.targeted["fc1"][IDX] = True
    train_steps(run, 2)
    unit = run.model.prunable_units()[0]
    weight = run.model.get_submodule(unit.module).weight
    before = weight.detach()[IDX.to(weight.device)].clone()
    run.intervention.start(unit, IDX)
    train_steps(run, 1)
    assert not torch.equal(weight.detach()[IDX.to(weight.device)], before)  # changed inside the window
    train_steps(run, 2)
    assert torch.equal(weight.detach()[IDX.to(weight.device)], before) and not run.intervention.windows


def test_a_gaussian_noise_run_on_the_device_records_its_events_and_masks_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = C.parse(BASE | {"intervention": {"kind": "gaussian", "batches": 2}}, ON_DEVICE)
    assert execute(cfg, out)["status"] == "finished"
    assert masked_units(out) == {} and len(units_named(out)["fc1"]) == 16


def test_a_conv_run_with_label_noise_and_probes_on_the_device_agrees_with_gst_flatness(tmp_path):
    """VGG with BatchNorm, E[BN] scores, label noise, the end-of-run probe and `gst flatness` of the saved model
    (on a GPU: bf16 training with channels_last and the fused optimizer)."""
    out = tmp_path / "run"
    cfg = C.parse(CONV, [*ON_DEVICE, "train.threads=null", "pruning.criterion=ebn", "data.label_noise=0.25",
                         "data.synthetic_train=192", "data.synthetic_test=64", "probes.at_end=true",
                         "probes.samples=32", "probes.top_k=2", "probes.prunability=true",
                         "probes.prunability_samples=32"])
    summary = execute(cfg, out)
    assert summary["status"] == "finished" and 0 <= summary["memorization"] <= 100
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"].startswith(DEVICE)
    unit_of_module = {u.module: u.name for u in prepare(cfg, None).model.prunable_units()}
    assert units_named(out) == masked_units(out, unit_of_module)
    probe = read_csv(out / "curvature.csv")[-1]
    assert float(probe["eig_max"]) > 0 and float(probe["distance_init"]) > 0
    assert main(["flatness", str(out), "--top-k", "2", "--samples", "32", "--no-progress"]) == 0
    again = read_csv(out / "flatness.csv")[-1]
    assert float(again["distance_init"]) == pytest.approx(float(probe["distance_init"]), rel=1e-5)
    assert float(again["eig_max"]) == pytest.approx(float(probe["eig_max"]), rel=1e-3)
    # the run copied to a machine without its device: measured on the CPU, the truth for the device's numbers
    # (cuDNN may run fp32 convolutions in TF32, about 3 decimal digits, hence the looser bound)
    assert main(["flatness", str(out), "--top-k", "2", "--samples", "32", "--device", "cpu", "--no-progress"]) == 0
    on_cpu = read_csv(out / "flatness.csv")[-1]
    assert float(on_cpu["distance_init"]) == pytest.approx(float(probe["distance_init"]), rel=1e-5)
    assert float(on_cpu["eig_max"]) == pytest.approx(float(probe["eig_max"]), rel=2e-2)
