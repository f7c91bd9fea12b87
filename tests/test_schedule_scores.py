"""Schedule arithmetic against docs/paper.md#pruning-schedule, E[BN] against sampling, and selection ties
(docs/paper.md#selection)."""

import math

import pytest
import torch

from gstlab.experiments.presets import RN_LAYERS, VGG_LAYERS
from gstlab.pruning.schedule import LayerPlan, event_epochs, iterative_rate
from gstlab.pruning.scores import ebn, ebn_signed, l1, l2
from gstlab.pruning.select import select_to_prune


def plan(n, frac, start, end, period) -> LayerPlan:
    return LayerPlan("layer", n, frac, tuple(event_epochs(start, end, period)))


def paper_formula_total(n, frac) -> int:
    return n - math.ceil((1 - frac) * n)


# (period, conv8 event epochs, conv8 k range, conv5-7 event count, conv5-7 ks, Figure 3 rate) from §7.7
VGG_TABLE = [
    (4, (6, 274, 68), (6, 7), 37, None, 1.32),
    (20, (6, 266, 14), (32, 33), 8, None, 6.43),
    (40, (6, 246, 7), (65, 66), 4, [38, 38, 38, 39], 12.86),
    (60, (6, 246, 5), (92, 92), 3, [51, 51, 51], 18.0),
    (100, (6, 206, 3), (153, 154), 2, [76, 77], 30.0),
    (200, (6, 206, 2), (230, 230), 1, [153], 45.0),
    (300, (6, 6, 1), (460, 460), 1, [153], 90.0),
]


@pytest.mark.parametrize("period, conv8_epochs, conv8_k, n_mid, mid_ks, rate", VGG_TABLE)
def test_vgg_schedule_matches_the_derived_table(period, conv8_epochs, conv8_k, n_mid, mid_ks, rate):
    (_, frac5, start5, end5), *_, (_, frac8, start8, end8) = VGG_LAYERS
    conv8 = plan(512, frac8, start8, end8, period).removals()
    first, last, count = conv8_epochs
    assert (min(conv8), max(conv8), len(conv8)) == (first, last, count)
    assert (min(conv8.values()), max(conv8.values())) == conv8_k
    assert sum(conv8.values()) == 460 == paper_formula_total(512, 0.9)
    conv5 = plan(512, frac5, start5, end5, period).removals()
    assert len(conv5) == n_mid and sum(conv5.values()) == 153
    if mid_ks is not None:
        assert list(conv5.values()) == mid_ks
    else:
        assert set(conv5.values()) <= {4, 5, 19, 20}
    assert iterative_rate(frac8, start8, end8, period) == pytest.approx(rate, abs=0.01)


def test_resnet18_schedule_matches_the_derived_table():
    kept = {name: 512 - paper_formula_total(512, frac) for name, frac, _, _ in RN_LAYERS}
    assert list(kept.values()) == [384, 308, 384, 26]
    period4 = {name: plan(512, f, s, e, 4).removals() for name, f, s, e in RN_LAYERS}
    assert [len(r) for r in period4.values()] == [36, 36, 41, 67]
    # §7.7 lists layer4.1.conv1 as "3 each", but 41 events x 3 < 128 pruned: the formula gives 3-4
    assert [(min(r.values()), max(r.values())) for r in period4.values()] == [(3, 4), (5, 6), (3, 4), (7, 8)]
    assert [sum(r.values()) for r in period4.values()] == [128, 204, 128, 486]
    last = plan(512, *RN_LAYERS[3][1:], 40).removals()
    assert list(last) == [10, 50, 90, 130, 170, 210, 250]
    assert {min(last.values()), max(last.values())} == {69, 70}


def test_table_f1_and_figure_4_schedules():
    f1 = plan(512, 0.7, 2500, 3999, 750).removals()
    assert f1 == {2500: 179, 3250: 179}
    for width, total in zip((16, 32, 64, 128, 256, 512), (1, 3, 6, 12, 25, 51)):
        assert sum(plan(width, 0.1, 40, 100, 30).removals().values()) == total
    assert list(plan(16, 0.1, 40, 100, 30).removals().items()) == [(100, 1)]  # prunes 0, 0, 1
    assert list(plan(64, 0.1, 40, 100, 30).removals().values()) == [2, 2, 2]


def test_zero_fraction_layer_never_prunes():
    assert plan(512, 0.0, 0, 100, 10).removals() == {}


# ------------------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("gamma, beta", [(1.0, 0.0), (0.5, 1.2), (2.0, -1.5), (-0.7, 0.3), (-1.3, -0.4)])
def test_ebn_equals_monte_carlo_expectation_of_relu(gamma, beta):
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampled = torch.relu(gamma * z + beta)
    expected = ebn(torch.tensor([gamma]), torch.tensor([beta])).item()
    assert expected == pytest.approx(sampled.mean().item(), abs=4 * sampled.std().item() / 2_000_000**0.5)


def test_ebn_signed_differs_only_for_negative_gamma():
    gamma, beta = torch.tensor([0.8, -0.8]), torch.tensor([0.2, 0.2])
    assert ebn_signed(gamma, beta)[0] == ebn(gamma, beta)[0]
    assert ebn_signed(gamma, beta)[1] != ebn(gamma, beta)[1]


def test_ebn_edge_cases_follow_the_official_code():
    # gamma = beta = 0 (a dead channel) scores 0, far-negative beta (Z underflow) scores 0, no NaN anywhere
    out = ebn(torch.tensor([0.0, 1e-3, 1.0]), torch.tensor([0.0, -50.0, 3.0]))
    assert out[0] == 0 and out[1] == 0 and torch.isfinite(out).all()
    assert out[2] == pytest.approx(3.0, rel=1e-3)


def test_norm_scores_per_output_unit():
    w = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 4.0]]]])
    assert l1(w).tolist() == [3.0, 7.0]
    assert l2(w).tolist() == pytest.approx([5**0.5, 5.0])


# ------------------------------------------------------------------------------------------------ selection


def test_smallest_and_largest_pick_the_extremes():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert torch.nonzero(select_to_prune(scores, 2, "smallest")).flatten().tolist() == [1, 3]
    assert torch.nonzero(select_to_prune(scores, 2, "largest")).flatten().tolist() == [2, 4]


def test_ties_and_all_equal_scores_resolve_by_index_order():
    tied = torch.tensor([0.2, 0.1, 0.1, 0.1, 0.5])
    assert torch.nonzero(select_to_prune(tied, 2, "smallest")).flatten().tolist() == [1, 2]
    equal = torch.ones(6)
    for side in ("smallest", "largest"):
        assert torch.nonzero(select_to_prune(equal, 3, side)).flatten().tolist() == [0, 1, 2]


def test_random_side_prunes_exactly_k_uniformly_and_reproducibly():
    scores = torch.arange(10.0)
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(10)
    for _ in range(3000):
        picked = select_to_prune(scores, 3, "random", gen)
        assert picked.sum() == 3
        counts += picked
    assert (counts / 3000 - 0.3).abs().max() < 0.04  # each unit picked with probability 3/10
    a = select_to_prune(scores, 3, "random", torch.Generator().manual_seed(7))
    b = select_to_prune(scores, 3, "random", torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_activation_scores_update_on_batches_every_2every_counted_from_one():
    from torch import nn

    from gstlab.models.units import units_from_names
    from gstlab.pruning.scores import ActivationTracker

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    tracker = ActivationTracker(net, units_from_names(net, ["0"]), every=3, momentum=0.5)
    batches = [torch.randn(5, 4) for _ in range(7)]
    expected, history = torch.zeros(3), []
    for i, x in enumerate(batches):
        tracker.before_batch()
        out = net(x)
        if i in (2, 5):  # the 3rd and 6th training batch, as the official counter (incremented, then % 3 == 0)
            expected = 0.5 * expected + 0.5 * out.detach().abs().sum(0)
        history.append(tracker._scores.get("0"))
    assert history[0] is None and history[1] is None
    assert torch.allclose(tracker.scores("0"), expected, rtol=1e-6)
    assert history[2] is history[4] and history[5] is history[6] and history[2] is not history[5]
    net.eval()
    tracker.before_batch(), tracker.before_batch()  # the 9th batch would update ...
    net(torch.randn(5, 4))  # ... but an evaluation forward never does
    assert tracker.scores("0") is history[6]


def test_activation_scores_of_a_linear_on_sequences_sum_over_all_but_its_unit_axis():
    """A Linear on (batch, time, features) has its units on the last axis, not on axis 1 (time)."""
    from torch import nn

    from gstlab.models.units import units_from_names
    from gstlab.pruning.scores import ActivationTracker

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    tracker = ActivationTracker(net, units_from_names(net, ["0"]), every=1, momentum=0.0)
    x = torch.randn(5, 3, 4)  # as many time steps as units: summing over the wrong axis keeps the shape
    tracker.before_batch()
    out = net(x)
    assert torch.equal(tracker.scores("0"), out.detach().abs().sum((0, 1)))
    from gstlab.models.units import PrunableUnit

    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh())  # the activation taken after the Linear: still its last axis
    tracker = ActivationTracker(net, [PrunableUnit("0", "0", activation="1")], every=1, momentum=0.0)
    tracker.before_batch()
    out = net(x)
    assert torch.equal(tracker.scores("0"), out.detach().abs().sum((0, 1)))


def test_activation_scores_after_a_transpose_into_batchnorm_are_per_feature():
    """PointNet: a Linear on (N, P, D) transposed into BatchNorm1d(D). The hook on the BatchNorm had taken the
    Linear's last axis, P there: per-point sums, or a refusal at the first event when P != D (an audit,
    2026-12-07)."""
    from torch import nn

    from gstlab.models.units import PrunableUnit
    from gstlab.pruning.scores import ActivationTracker

    class PointNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.b1 = nn.Linear(3, 16), nn.BatchNorm1d(16)

        def forward(self, x):
            return self.b1(self.l1(x).transpose(1, 2))

    torch.manual_seed(0)
    net = PointNet()
    for points in (12, 16):
        tracker = ActivationTracker(net, [PrunableUnit("l1", "l1", bn="b1")], every=1, momentum=0.0)
        tracker.before_batch()
        out = net(torch.randn(8, points, 3))
        assert torch.equal(tracker.scores("l1"), out.detach().abs().sum((0, 2)))
        tracker.remove()


def test_activation_scores_follow_the_units_the_trace_finds_after_a_transpose():
    """An activation module after the transposed BatchNorm (a ReLU, declared with ``activation=``) holds the
    features on axis 1 too: its layer type said 'last axis', the points (a review, 2026-12-07)."""
    from torch import nn

    from gstlab import config as C
    from gstlab import dataflow
    from gstlab.models.units import PrunableUnit
    from gstlab.runner import _tracker

    class PointNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.b1, self.relu, self.head = nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.relu(self.b1(self.l1(x).transpose(1, 2))).amax(2))

    torch.manual_seed(0)
    net, x = PointNet(), torch.randn(8, 16, 3)  # as many points as features: a wrong axis keeps the shape
    units = [PrunableUnit("l1", "l1", bn="b1", activation="relu")]
    cfg = C.parse({"pruning": {"criterion": "activation", "activation_every": 1, "activation_momentum": 0.0,
                               "layers": [{"name": "l1", "fraction": 0.5, "start": 1, "end": 1}]}})
    flow = dataflow.trace(net, x[:2], 4)
    assert flow.unit_dims["relu"] == {"l1": 1} and flow.unit_dims["l1"] == {"l1": 2}
    tracker = _tracker(cfg, net, units, flow)
    tracker.before_batch()
    net.train()
    net(x)
    h = net.relu(net.b1(net.l1(x).transpose(1, 2))).detach()
    assert torch.equal(tracker.scores("l1"), h.abs().sum((0, 2)))


def test_ebn_keeps_its_digits_far_in_the_left_tail():
    """E[ReLU(N(-t, 1))] = phi(t) (1/t^2 - 3/t^4 + 15/t^6 - ...): the official form cancelled above t ~ 6 (relative
    error 8e-2 at t = 7.5, a negative value at t = 8, a larger one at 8.2 than at 8, 0 from 8.5 on)."""
    import math

    from gstlab.pruning.scores import ebn

    ts = [6.0, 7.0, 7.5, 8.0, 8.2, 8.5, 10.0, 15.0, 20.0, 30.0]
    got = ebn(torch.ones(len(ts), dtype=torch.float64), -torch.tensor(ts, dtype=torch.float64)).tolist()
    for t, value in zip(ts, got):
        series = sum((-1) ** i * math.prod(range(1, 2 * i + 2, 2)) / t ** (2 * i + 2) for i in range(5))
        rest = math.prod(range(1, 12, 2)) / t ** 12  # the first term left out bounds the series' error
        phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
        assert abs(value - phi * series) <= phi * max(rest, 1e-9 * series)  # 1e-9: phi - alpha * tail cancels
    assert all(a > b > 0 for a, b in zip(got, got[1:]))
