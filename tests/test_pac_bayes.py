"""PAC-Bayes flatness (gstlab.pac_bayes) against its exact value on a linear classifier, whose expected accuracy
under Gaussian weight noise is a sum of normal CDFs; the search, the masks and the wiring into probes and
`gst flatness`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn

from gstlab import config as C
from gstlab.pac_bayes import (
    CACHE_BYTES,
    MAG_EPS,
    REL_TOL,
    NoiseDraws,
    Perturbation,
    cache_budget,
    largest_passing_sigma,
    pac_bayes,
    pac_bayes_sigma,
    within_drop,
)

DROP = 10.0


def linear_problem():
    """A 2-class linear classifier on 1-D points: logit difference mu(x) = (a1 - a0) x + (c1 - c0)."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-0.8], [1.2]]))
        model.bias.copy_(torch.tensor([0.3, -0.1]))
    x = torch.linspace(-2.0, 2.0, 101).unsqueeze(1)
    y = (x[:, 0] > 0.05).long()
    return model, x, y


def exact_accuracy(model, x, y, sigma: float, magnitude: bool) -> float:
    """E[accuracy] (%) with u_i ~ N(0, sigma^2) (or N(0, sigma^2 w_i^2 + eps^2)) on the four parameters: the
    logit difference is mu(x) plus a normal of variance v_a x^2 + v_c."""
    (a0, a1), (c0, c1) = model.weight.detach()[:, 0].tolist(), model.bias.detach().tolist()
    xs, sign = x[:, 0].double().numpy(), np.where(y.numpy() == 1, 1.0, -1.0)
    if magnitude:
        v_a = sigma ** 2 * (a0 ** 2 + a1 ** 2) + 2 * MAG_EPS ** 2
        v_c = sigma ** 2 * (c0 ** 2 + c1 ** 2) + 2 * MAG_EPS ** 2
    else:
        v_a = v_c = 2 * sigma ** 2
    mu = (a1 - a0) * xs + (c1 - c0)
    return 100.0 * float(np.mean(stats.norm.cdf(sign * mu / np.sqrt(v_a * xs ** 2 + v_c))))


@pytest.mark.parametrize("magnitude", [False, True])
def test_sigma_matches_the_exact_noise_level_of_a_linear_classifier(magnitude):
    model, x, y = linear_problem()
    base = 100.0 * float((model(x).argmax(1) == y).float().mean())
    exact = optimize.brentq(lambda s: base - exact_accuracy(model, x, y, s, magnitude) - DROP, 1e-4, 100.0)
    sigma, measured_base, evaluations = pac_bayes_sigma(model, x, y, DROP, draws=3000, batch_size=256, seed=7,
                                                        magnitude=magnitude)
    assert measured_base == pytest.approx(base)
    assert sigma == pytest.approx(exact, rel=0.04)
    assert evaluations % 3000 == 0 and evaluations > 0


def test_the_search_finds_a_threshold_to_its_tolerance_or_says_inf_or_zero():
    for threshold in (1e-5, 0.05, 0.3, 100.0):
        sigma = largest_passing_sigma(lambda s, t=threshold: s <= t)
        assert threshold / (1 + REL_TOL) <= sigma <= threshold
    assert largest_passing_sigma(lambda s: True) == math.inf
    assert largest_passing_sigma(lambda s: False) == 0.0
    assert largest_passing_sigma(lambda s: s <= 1100) == math.inf  # every doubling up to 2^10 passes (819.2)
    assert 800 / (1 + REL_TOL) <= largest_passing_sigma(lambda s: s <= 800) <= 800


def test_the_drop_is_compared_in_counts_so_an_exact_tie_passes():
    # 300 examples, 3 draws: 206 right unperturbed, 176 per draw: exactly 10 points (as percentages, 10.000000000000007)
    assert 100.0 * 206 / 300 - 3 * (100.0 * 176 / 300) / 3 > 10
    assert within_drop(206, 3 * 176, 3, 300, 10.0) and not within_drop(206, 3 * 176 - 1, 3, 300, 10.0)


def test_noise_spares_pruned_entries_and_the_model_comes_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    keep = torch.ones(6, 4, dtype=torch.bool)
    keep[:2] = False
    with torch.no_grad():
        model[0].weight[~keep] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noise = Perturbation(model, {"0.weight": keep}, NoiseDraws(model, seed=3, draws=1), magnitude=False)
    noise.apply(0.5, 0)
    first = model[0].weight.detach().clone()
    assert (first[~keep] == 0).all() and (first[keep] != before["0.weight"][keep]).all()
    assert torch.equal(model[1].running_mean, before["1.running_mean"])  # buffers are not perturbed
    noise.apply(0.5, 0)  # a draw is the same vector every time
    assert torch.equal(model[0].weight, first)
    noise.apply(1.0, 0)  # ... scaled by sigma
    assert torch.allclose(model[0].weight - before["0.weight"], 2 * (first - before["0.weight"]))
    noise.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    row = pac_bayes(model, x, y, DROP, draws=2, batch_size=32, seed=1, param_masks={"0.weight": keep})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert row["pac_bayes_flatness"] == pytest.approx(1 / row["pac_bayes_sigma"] ** 2)
    assert row["pac_bayes_mag_flatness"] == pytest.approx(1 / row["pac_bayes_mag_sigma"] ** 2)


def test_kept_draws_give_bit_identical_noise_and_sigma_to_draws_made_anew():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))
    kept, anew = NoiseDraws(model, seed=4, draws=3), NoiseDraws(model, seed=4, draws=3, cache_bytes=0)
    assert anew.cache is None and kept.cache == {}
    size = 3 * 4 * (5 * 8 + 8 + 8 * 3 + 3)  # 3 draws of 75 float32 parameters
    assert NoiseDraws(model, 4, 3, cache_bytes=size).cache == {} and NoiseDraws(model, 4, 3, size - 1).cache is None
    for magnitude in (False, True):
        for sigma, draw in ((0.3, 0), (0.3, 2), (1.7, 0)):
            noisy = []
            for normals in (kept, anew):
                noise = Perturbation(model, None, normals, magnitude)
                noise.apply(sigma, draw)
                noisy.append([p.detach().clone() for p in model.parameters()])
                noise.restore()
            assert all(torch.equal(a, b) for a, b in zip(*noisy))
    assert sorted(kept.cache) == [0, 2]
    for magnitude in (False, True):
        assert (pac_bayes_sigma(model, x, y, DROP, 3, 64, 4, magnitude, normals=kept)
                == pac_bayes_sigma(model, x, y, DROP, 3, 64, 4, magnitude, normals=anew))


def test_the_draws_kept_on_a_gpu_take_at_most_a_quarter_of_its_free_memory(monkeypatch):
    free = {"free": 2 ** 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["free"], 80 * 2 ** 30))
    assert cache_budget(torch.device("cuda", 0)) == 2 ** 28
    free["free"] = 64 * 2 ** 30
    assert cache_budget(torch.device("cuda", 0)) == CACHE_BYTES == cache_budget(torch.device("cpu"))


@pytest.mark.parametrize(("drop", "message"), [("0", "; allowed: accuracy points in \\(0, 100\\)"),
                                              ("100", "; allowed: accuracy points in \\(0, 100\\)"),
                                              ("-1", "; allowed: accuracy points in \\(0, 100\\)"),
                                              ("nan", "expected a finite number, got nan")])
def test_a_drop_outside_0_100_is_one_line(drop, message):
    with pytest.raises(C.ConfigError, match=rf"^probes.pac_bayes_drop: .*{message}$"):
        C.parse({"probes": {"pac_bayes": True}}, [f"probes.pac_bayes_drop={drop}"])


def test_a_draw_count_beyond_the_limit_is_one_line():
    with pytest.raises(C.ConfigError, match=r"^probes.pac_bayes_draws: must be <= 100,000, got 1,000,000,000,000$"):
        C.parse({"probes": {"pac_bayes": True}}, ["probes.pac_bayes_draws=1000000000000"])


def test_reports_count_the_sharpest_runs_and_note_different_settings():
    import pandas as pd

    from gstlab.analysis.measures import probe_notes

    last = pd.DataFrame({"run_id": ["a", "b", "c"], "epoch": [9, 9, 9], "pac_bayes_flatness": [4.0, 9.0, 1.0],
                         "pac_bayes_mag_flatness": [math.inf, 2.0, math.inf], "pac_bayes_drop": [10.0, 10.0, 5.0]})
    notes = probe_notes(last)
    assert any(n.startswith("magnitude-aware PAC-Bayes flatness: 2 of 3 runs have σ = 0") for n in notes)
    assert not any(n.startswith("PAC-Bayes flatness:") for n in notes)
    assert any("different settings (pac_bayes_drop 10.0: 2 runs; pac_bayes_drop 5.0: 1 runs)" in n for n in notes)


def test_off_by_default_and_out_of_the_run_id():
    assert "probes" not in C.result_dict(C.parse({}))
    assert C.run_id(C.parse({"probes": {"pac_bayes_draws": 10}})) == C.run_id(C.parse({}))
