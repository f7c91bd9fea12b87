"""Adaptive worst-case sharpness (gstlab.sharpness) against its exact value for a quadratic loss at its minimum
(ρ²/2 · λ_max(D H D)) and a linear loss (ρ ||D g||), D = diag|w|; its invariance to rescaling a ReLU network's
layers; pruned entries; the wiring into probes and `gst flatness` is in tests/test_measures.py."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from gstlab import config as C
from gstlab.curvature import HessianOperator
from gstlab.sharpness import adaptive_sharpness, worst_case_increase


class Vector(nn.Module):
    """Outputs its parameter vector for every example, so a loss of the output is a function of the parameters."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.unsqueeze(0).expand(len(x), -1)


def problem(d: int = 6):
    gen = torch.Generator().manual_seed(0)
    theta = 0.5 + 1.5 * torch.rand(d, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    hessian = q @ torch.diag(torch.linspace(0.2, 3.0, d, dtype=torch.float64)) @ q.T
    return Vector(theta).double(), theta, hessian, torch.zeros(8, 1, dtype=torch.float64), torch.zeros(8)


def test_a_quadratic_at_its_minimum_gives_rho_squared_over_2_times_the_top_eigenvalue_of_dhd():
    model, theta, hessian, x, y = problem()

    def loss(out, _):
        diff = out[0] - theta
        return 0.5 * diff @ hessian @ diff

    d = torch.diag(theta.abs())
    exact = 0.5 * 0.3 ** 2 * float(torch.linalg.eigvalsh(d @ hessian @ d).max())
    op = HessianOperator(model, loss, x, y, batch_size=4)
    increase, base = worst_case_increase(op, 0.3, 200, torch.Generator().manual_seed(1))
    assert base == pytest.approx(0.0, abs=1e-12)
    assert increase == pytest.approx(exact, rel=1e-6)
    assert torch.equal(model.theta.detach(), theta)  # restored exactly


def test_a_linear_loss_gives_rho_times_the_norm_of_the_scaled_gradient_and_pruned_entries_stay():
    model, theta, _, x, y = problem()
    with torch.no_grad():
        model.theta[2] = 0.0  # a pruned entry: |w| = 0, it cannot move
    keep = torch.ones(6, dtype=torch.bool)
    keep[2] = False
    g = torch.tensor([1.0, -2.0, 5.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    seen = []

    def loss(out, _):
        seen.append(float(out[0][2].detach()))
        return out[0] @ g

    op = HessianOperator(model, loss, x, y, masks={"theta": keep}, batch_size=8)
    increase, _ = worst_case_increase(op, 0.2, 300, torch.Generator().manual_seed(2))
    exact = 0.2 * float((model.theta.detach().abs() * g)[keep].norm())
    assert increase == pytest.approx(exact, rel=1e-4) and set(seen) == {0.0}


def mlp_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.randn(96, 5), torch.randint(0, 3, (96,))


def test_rescaling_a_relu_layer_and_its_successor_leaves_it_unchanged():
    model, x, y = mlp_and_data()
    kwargs = dict(rho=0.3, steps=10, batch=32, eval_batch_size=32, seed=5)
    before = adaptive_sharpness(model, nn.functional.cross_entropy, x, y, **kwargs)
    with torch.no_grad():
        model[0].weight *= 4.0
        model[0].bias *= 4.0
        model[2].weight /= 4.0
    after = adaptive_sharpness(model, nn.functional.cross_entropy, x, y, **kwargs)
    assert after["sharpness_loss"] == pytest.approx(before["sharpness_loss"], rel=1e-5)
    assert after["sharpness"] == pytest.approx(before["sharpness"], rel=1e-3) and before["sharpness"] > 0


def test_a_perturbed_loss_that_is_not_finite_is_the_sharpest_there_is():
    model, theta, _, x, y = problem()

    def loss(out, _):
        diff = out[0] - theta
        return diff @ diff * (float("nan") if bool((diff != 0).any()) else 1.0)

    op = HessianOperator(model, loss, x, y, batch_size=8)
    assert worst_case_increase(op, 0.3, 5, torch.Generator().manual_seed(1)) == (float("inf"), 0.0)
    assert torch.equal(model.theta.detach(), theta)


def test_a_loss_at_w_that_is_not_finite_gives_no_value_and_reports_say_so():
    import pandas as pd

    from gstlab.analysis.measures import probe_notes

    model, theta, _, x, y = problem()

    def only_at_w(out, _):
        diff = out[0] - theta
        return diff @ diff + (float("nan") if bool((diff == 0).all()) else 0.0)

    def everywhere(out, _):
        return out[0].sum() * float("nan")

    for loss in (only_at_w, everywhere):
        op = HessianOperator(model, loss, x, y, batch_size=8)
        increase, base = worst_case_increase(op, 0.3, 5, [torch.Generator().manual_seed(s) for s in (1, 2)])
        assert math.isnan(increase) and math.isnan(base), loss  # not the sharpest (inf): no value
    nan = float("nan")
    last = pd.DataFrame({"run_id": list("abc"), "sharpness": [0.1, nan, nan], "sharpness_rho": [0.5, 0.5, nan]})
    assert "Sharpness: 1 of 3 runs measured it without a value (their training loss at w is not finite) and are " \
           "left out of its correlations." in probe_notes(last)


def test_a_shorter_last_batch_weighs_by_its_size(monkeypatch):
    import gstlab.sharpness as sharpness

    model, x, y = mlp_and_data()
    monkeypatch.setattr(sharpness, "worst_case_increase", lambda op, *_: (float(len(op.y)), 1.0))
    row = sharpness.adaptive_sharpness(model, nn.functional.cross_entropy, x[:50], y[:50], 0.3, 5, 20, 20, seed=1)
    assert row["sharpness"] == pytest.approx((20 * 20 + 20 * 20 + 10 * 10) / 50)  # unweighted: 50 / 3


def test_batches_weigh_by_size_and_the_model_comes_back_exactly():
    model, x, y = mlp_and_data()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    whole = adaptive_sharpness(model, nn.functional.cross_entropy, x[:40], y[:40], 0.3, 5, 40, 40, seed=1)
    parts = [adaptive_sharpness(model, nn.functional.cross_entropy, x[i:i + 20], y[i:i + 20], 0.3, 5, 20, 20, seed=1)
             for i in (0, 20)]
    split = adaptive_sharpness(model, nn.functional.cross_entropy, x[:40], y[:40], 0.3, 5, 20, 20, seed=1)
    assert split["sharpness_loss"] == pytest.approx((parts[0]["sharpness_loss"] + parts[1]["sharpness_loss"]) / 2)
    assert whole["sharpness_loss"] == pytest.approx(split["sharpness_loss"], rel=1e-6)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("rho", ["-0.5", "0", "1e-320", "5e-5", "101"])
def test_a_radius_outside_its_range_is_one_line(rho):
    with pytest.raises(C.ConfigError, match=r"^probes.sharpness_rho: .*; allowed: a radius in \[0.0001, 100\]$"):
        C.parse({"probes": {"sharpness": True}}, [f"probes.sharpness_rho={rho}"])


def test_off_by_default_and_out_of_the_run_id():
    assert C.run_id(C.parse({"probes": {"sharpness_rho": 0.5}})) == C.run_id(C.parse({}))


def test_reports_compare_settings_only_among_the_runs_that_measured_it():
    import pandas as pd

    from gstlab.analysis.measures import probe_notes

    nan = float("nan")
    last = pd.DataFrame({"run_id": list("abcd"), "method": ["lanczos"] * 4, "k": [20] * 4,
                         "sharpness_rho": [0.5, 0.5, nan, nan], "pac_bayes_drop": [nan, nan, 10.0, 10.0]})
    assert not any("different settings" in n for n in probe_notes(last))  # not measured is not another setting
    last["sharpness"] = [0.1, float("inf"), nan, nan]
    assert "Sharpness: 1 of 4 runs have sharpness ∞ (a perturbed loss within the radius was not finite: the " \
           "sharpest runs) and are left out of its correlations." in probe_notes(last)
    last.loc[1, "sharpness_rho"] = 1.0
    notes = [n for n in probe_notes(last) if "different settings" in n]
    assert len(notes) == 1 and notes[0].startswith("Probes: the runs' last sharpness probes were made with "
                                                   "different settings (sharpness_rho 0.5: 1 runs; sharpness_rho "
                                                   "1.0: 1 runs)")


def cap_problem():
    """A loss that rises only in a cap of the sphere ||γ|| = 0.5 around γ = (0.5, 0) (its exact maximum over the
    ball: 3 x 0.05 at that point); elsewhere it is 0 and flat, so an ascent that starts outside the cap stays."""
    theta = torch.ones(2, dtype=torch.float64)  # |w| = 1: γ is the step itself
    model = Vector(theta).double()

    def loss(out, _):
        return 3.0 * torch.relu(out[0][0] - theta[0] - 0.45)

    return HessianOperator(model, loss, torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4), batch_size=4)


def test_more_starts_find_the_exact_maximum_one_start_misses():
    op = cap_problem()
    single, _ = worst_case_increase(op, 0.5, 20, torch.Generator().manual_seed(2))
    starts = [torch.Generator().manual_seed(2), *(torch.Generator().manual_seed(100 + r) for r in range(31))]
    several, base = worst_case_increase(op, 0.5, 20, starts)
    assert single == 0.0 and base == 0.0  # its one start lay outside the cap
    assert several == pytest.approx(3 * 0.05, rel=1e-9)
    assert torch.equal(op.model.theta.detach(), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("batch", [96, 32, 20])
def test_one_restart_is_the_single_start_measurement_and_more_never_measure_less(batch):
    model, x, y = mlp_and_data()
    kwargs = dict(rho=1.0, steps=4, batch=batch, eval_batch_size=32, seed=7)
    one = adaptive_sharpness(model, nn.functional.cross_entropy, x, y, **kwargs)
    assert adaptive_sharpness(model, nn.functional.cross_entropy, x, y, **kwargs, restarts=1) == one
    if batch == 96:
        op = HessianOperator(model, nn.functional.cross_entropy, x, y, batch_size=32)
        assert one["sharpness"] == worst_case_increase(op, 1.0, 4, torch.Generator().manual_seed(7))[0]
    several = adaptive_sharpness(model, nn.functional.cross_entropy, x, y, **kwargs, restarts=4)
    assert several["sharpness_loss"] == one["sharpness_loss"]
    assert several["sharpness"] >= one["sharpness"] > 0


def test_rows_made_before_restarts_were_recorded_read_as_one_start():
    import pandas as pd

    from gstlab.analysis.measures import probe_notes
    from gstlab.analysis.results import with_later_settings

    nan = float("nan")
    old = pd.DataFrame({"run_id": list("abc"), "method": ["lanczos"] * 3, "k": [20] * 3,
                        "sharpness": [0.1, nan, nan], "sharpness_rho": [0.5, 0.5, nan]})  # b: no value
    filled = with_later_settings(old.copy())
    assert filled["sharpness_restarts"].tolist()[:2] == [1, 1] and pd.isna(filled["sharpness_restarts"][2])
    new = pd.DataFrame({"run_id": ["d"], "method": ["lanczos"], "k": [20], "sharpness": [0.3],
                        "sharpness_rho": [0.5], "sharpness_restarts": [1]})
    both = with_later_settings(pd.concat([old, new], ignore_index=True))
    assert not any("different settings" in n for n in probe_notes(both))
    both.loc[3, "sharpness_restarts"] = 4
    notes = [n for n in probe_notes(both) if "different settings" in n]
    assert len(notes) == 1 and re.search(r"sharpness_restarts 4(\.0)?: 1 runs", notes[0])


@pytest.mark.parametrize("value", ["0", "-1", "10001"])
def test_restarts_outside_their_range_are_one_line(value):
    with pytest.raises(C.ConfigError, match=r"^probes.sharpness_restarts: "):
        C.parse({"probes": {"sharpness": True}}, [f"probes.sharpness_restarts={value}"])
