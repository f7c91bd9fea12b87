"""Distance from initialization and prunability against exact answers: 0 for an untrained model, a hand
computation on a two-layer net, bisection = brute-force scan, the model restored bit-exactly, and the end-of-run
probe agreeing with `gst flatness` on the saved model."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gstlab import config as C
from gstlab.cli import main
from gstlab.measures import MagnitudePruning, distance_from_init, initial_parameters, prunability, smallest_passing
from gstlab.probes import FlatnessProbe
from gstlab.runner import execute, prepare
from gstlab.train import evaluate
from test_runner import TINY

PROBED = {**TINY, "probes": {"at_end": True, "samples": 64, "top_k": 2, "grad_moment": False, "prunability": True,
                             "prunability_samples": 100, "pac_bayes": True, "pac_bayes_samples": 100,
                             "pac_bayes_draws": 2, "sharpness": True, "sharpness_samples": 100,
                             "sharpness_batch": 40, "sharpness_steps": 3,
                             "sharpness_restarts": 2}}


def test_distance_from_init_is_zero_for_an_untrained_model_rebuilt_from_the_seed(tmp_path):
    run = prepare(C.parse(PROBED), tmp_path / "a")
    probe = next(cb for cb in run.callbacks if isinstance(cb, FlatnessProbe))
    assert distance_from_init(run.model, probe.init) == 0.0
    again = prepare(C.parse(PROBED), tmp_path / "b")  # the init is a function of the seed alone
    assert distance_from_init(again.model, probe.init, run.masks.param_masks()) == 0.0
    other = prepare(C.parse(PROBED, ["seed=6"]), tmp_path / "c")
    assert distance_from_init(other.model, probe.init) > 0


def test_distance_from_init_by_hand_on_a_two_layer_net():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    init = initial_parameters(net)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
        net[0].bias.copy_(torch.tensor([0.5, 0.0]))
        net[2].weight.copy_(torch.tensor([[4.0, -1.0]]))
    assert distance_from_init(net, init) == pytest.approx(math.sqrt(1 + 4 + 9 + 0.25 + 16 + 1))
    # unit 1 of the first layer pruned: its weight row and bias entry leave the sum
    masks = {"0.weight": torch.tensor([[True, True], [False, False]]), "0.bias": torch.tensor([True, False])}
    assert distance_from_init(net, init, masks) == pytest.approx(math.sqrt(1 + 4 + 0.25 + 16 + 1))


def _trained_tiny():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_prunability_bisection_equals_a_brute_force_scan():
    model, x, y = _trained_tiny()
    before = [p.detach().clone() for p in model.parameters()]
    base = evaluate(model, x, y, 64).loss
    pruning = MagnitudePruning(model)
    assert pruning.n == 4 * 8 + 8 * 3  # the weights, not the biases
    losses = []
    for k in range(pruning.n + 1):
        pruning.keep(k)
        losses.append(evaluate(model, x, y, 64).loss)
    pruning.restore()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert losses[-1] == base
    step = 0.05
    for delta in (0.1, 0.5):
        threshold = (1 + delta) * base
        k = next(k for k in range(pruning.n + 1) if all(v <= threshold for v in losses[k:]))
        assert all(v > threshold for v in losses[:k])  # the curve crosses once: the answer is unique
        got = prunability(model, x, y, delta, 64)
        assert got["prunability"] == k / pruning.n and got["prunability_loss"] == base
        assert got["prunability_evals"] <= math.ceil(math.log2(pruning.n)) + 1
        scan = min(f for f in (i * step for i in range(int(1 / step) + 1))
                   if losses[math.ceil(f * pruning.n - 1e-9)] <= threshold)
        assert abs(got["prunability"] - scan) <= step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # restored exactly


def test_bisection_on_every_monotone_predicate_and_a_crossing_otherwise():
    for n in range(1, 20):
        for answer in range(n + 1):
            assert smallest_passing(n, lambda k, a=answer: k >= a) == answer
    wavy = [False, True, False, False, True, True, True]  # not monotone: a k that passes with k - 1 failing
    k = smallest_passing(6, lambda i: wavy[i])
    assert wavy[k] and not wavy[k - 1]


def test_prunability_counts_only_surviving_weights():
    model, x, y = _trained_tiny()
    masks = {"0.weight": torch.ones(8, 4, dtype=torch.bool)}
    masks["0.weight"][:3] = False
    with torch.no_grad():
        model[0].weight[:3] = 0
    assert MagnitudePruning(model, masks).n == 5 * 4 + 8 * 3


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_end_probe_and_gst_flatness_agree_on_the_final_model(tmp_path):
    out = tmp_path / "run"
    execute(C.parse(PROBED), out)
    probe = read_csv(out / "curvature.csv")[-1]
    assert float(probe["distance_init"]) > 0 and 0 < float(probe["prunability"]) <= 1
    assert float(probe["prunability_delta"]) == 0.1 and int(probe["prunability_samples"]) == 100
    assert float(probe["pac_bayes_sigma"]) > 0 and int(probe["pac_bayes_draws"]) == 2
    assert float(probe["pac_bayes_mag_flatness"]) == pytest.approx(1 / float(probe["pac_bayes_mag_sigma"]) ** 2)
    assert float(probe["sharpness"]) > 0 and int(probe["sharpness_batch"]) == 40
    assert main(["flatness", str(out), "--top-k", "2", "--samples", "64", "--prunability", "--no-progress"]) == 0
    again = read_csv(out / "flatness.csv")[-1]
    for key in ("distance_init", "prunability", "prunability_loss", "pac_bayes_sigma", "pac_bayes_mag_sigma",
                "pac_bayes_acc", "sharpness", "sharpness_loss"):
        assert float(again[key]) == pytest.approx(float(probe[key]), rel=1e-6), key
    assert int(probe["sharpness_restarts"]) == int(again["sharpness_restarts"]) == 2
    assert main(["flatness", str(out), "--top-k", "2", "--samples", "64", "--sharpness-restarts", "1",
                 "--no-progress"]) == 0
    single = read_csv(out / "flatness.csv")[-1]  # its one start is the first of the two
    assert int(single["sharpness_restarts"]) == 1 and float(single["sharpness"]) <= float(probe["sharpness"])
