"""Instability, mean stability, best post-pruning accuracy and gap against hand-computed values (§2)."""

import math

import pytest

from gstlab.analysis.summary import instability, mean_stability, summarize


def metrics(rows):
    return [dict(zip(("epoch", "train_acc", "test_acc"), r)) for r in rows]


def event(epoch, before, after, removed=5, layer="conv8"):
    return {"epoch": epoch, "layer": layer, "units_removed": removed, "acc_before": before, "acc_after": after}


def test_instability_is_relative_and_can_be_negative():
    assert instability(80.0, 60.0) == pytest.approx(0.25)
    assert instability(50.0, 55.0) == pytest.approx(-0.1)
    assert math.isnan(instability(0.0, 10.0))


def test_mean_stability_averages_epochs_not_layers():
    # epoch 2: two layers pruned (same accuracies), epoch 5: one layer; both epochs weigh the same
    events = [event(2, 80, 60, layer="a"), event(2, 80, 60, layer="b"), event(5, 90, 90 * 0.98)]
    expected = (100 * (1 - 0.25) + 100 * (1 - 0.02)) / 2
    assert mean_stability(events, scratch=False) == pytest.approx(expected)


def test_no_pruning_and_scratch_runs_are_100_percent_stable():
    assert mean_stability([], scratch=False) == 100.0
    assert mean_stability([event(0, 10, 9)], scratch=True) == 100.0
    assert mean_stability([event(3, 10, 10, removed=0)], scratch=False) == 100.0


def test_summary_best_accuracy_after_last_pruning_epoch_and_gap_at_that_epoch():
    m = metrics([(0, 50, 40), (1, 60, 70), (2, 70, 65), (3, 80, 68), (4, 90, 67), (5, 95, 68)])
    events = [event(1, 72, 60), event(3, 70, 63)]
    s = summarize(m, events, scratch=False)
    # epoch 1 has the overall max (70) but lies before the last pruning epoch (3)
    assert s["last_pruned_epoch"] == 3
    assert s["best_test_acc"] == 68 and s["best_epoch"] == 3  # first epoch reaching the max
    assert s["generalization_gap"] == 80 - 68
    assert s["final_test_acc"] == 68
    assert s["n_prune_epochs"] == 2 and s["n_events"] == 2
    assert s["mean_stability"] == pytest.approx((100 * 60 / 72 + 100 * 63 / 70) / 2)


def test_summary_without_pruning_uses_all_epochs():
    m = metrics([(0, 50, 40), (1, 60, 70), (2, 70, 65)])
    s = summarize(m, [], scratch=False)
    assert (s["best_test_acc"], s["best_epoch"], s["last_pruned_epoch"], s["mean_stability"]) == (70, 1, 0, 100.0)
