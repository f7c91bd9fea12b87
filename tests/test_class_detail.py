"""Per-event class detail against exact answers: recalls weighted by class counts give the accuracy, flips bound
the net change, an unchanged model flips nothing, the events' accuracies are those of the class table (also for
an intervention, whose acc_after is the perturbed model's), and the run summaries match hand computations."""

import csv
import json
import math

import pytest
import torch

from gstlab import config as C
from gstlab.class_detail import class_table, distortion_terms, flips, summarize_classes
from gstlab.runner import execute, prepare
from gstlab.train import evaluate
from test_runner import TINY


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def weighted(rows, key):
    return sum(int(r["count"]) * float(r[key]) for r in rows) / sum(int(r["count"]) for r in rows)


def test_recalls_weighted_by_counts_are_the_accuracy_and_flips_bound_the_change(tmp_path):
    run = prepare(C.parse(TINY), tmp_path / "run")
    x, y = run.trainer.eval_data
    before = evaluate(run.model, x, y, 48, predictions=True)
    same = evaluate(run.model, x, y, 48, predictions=True)
    assert flips(before.pred, same.pred) == 0.0
    assert all(r["flips"] == 0.0 and r["recall_before"] == r["recall_after"] for r in class_table(y, before.pred,
                                                                                                   same.pred))
    run.masks.prune("fc1", torch.arange(20))
    after = evaluate(run.model, x, y, 48, predictions=True)
    table = class_table(y, before.pred, after.pred)
    assert sum(r["count"] for r in table) == len(y)
    assert weighted(table, "recall_before") == pytest.approx(before.acc, rel=1e-12, abs=1e-12)
    assert weighted(table, "recall_after") == pytest.approx(after.acc, rel=1e-12, abs=1e-12)
    assert weighted(table, "flips") == pytest.approx(flips(before.pred, after.pred), rel=1e-12)
    assert flips(before.pred, after.pred) >= abs(after.acc - before.acc)
    assert flips(before.pred, after.pred) > 0  # the pruning changed predictions: the bounds are not vacuous
    for r in table:  # per class too: a change of the right count needs at least that many flips
        assert r["flips"] >= abs(r["recall_after"] - r["recall_before"]) - 1e-12


def test_predictions_are_kept_only_when_asked(tmp_path):
    run = prepare(C.parse(TINY), tmp_path / "run")
    plain, kept = run.trainer.evaluate(), run.trainer.evaluate(predictions=True)
    assert plain.pred is None and (plain.acc, plain.loss) == (kept.acc, kept.loss)
    assert kept.pred.shape == run.trainer.eval_data[1].shape


@pytest.mark.parametrize("extra", [[], ["intervention.kind=zero", "intervention.batches=3"]],
                         ids=["prune", "zero-intervention"])
def test_run_writes_class_detail_matching_its_events(tmp_path, extra):
    summary = execute(C.parse(TINY, extra), tmp_path / "run")
    events, classes = read_csv(tmp_path / "run" / "events.csv"), read_csv(tmp_path / "run" / "events_classes.csv")
    metrics = read_csv(tmp_path / "run" / "metrics.csv")
    assert {(int(e["epoch"]), e["layer"]) for e in events} == {(int(r["epoch"]), r["layer"]) for r in classes}
    flips_per_epoch = {}
    for e in events:
        rows = [r for r in classes if (r["epoch"], r["layer"]) == (e["epoch"], e["layer"])]
        assert sum(int(r["count"]) for r in rows) == TINY["data"]["synthetic_test"]
        assert weighted(rows, "recall_before") == pytest.approx(float(e["acc_before"]), rel=1e-12)
        assert weighted(rows, "recall_after") == pytest.approx(float(e["acc_after"]), rel=1e-12)
        flips_per_epoch[int(e["epoch"])] = weighted(rows, "flips")
        assert flips_per_epoch[int(e["epoch"])] >= abs(float(e["acc_after"]) - float(e["acc_before"])) - 1e-12
    if extra:  # the event's acc_after is the perturbed model's, not the epoch's test accuracy
        assert any(float(e["acc_after"]) != float(metrics[int(e["epoch"])]["test_acc"]) for e in events)
    assert summary["mean_flips"] == pytest.approx(sum(flips_per_epoch.values()) / len(flips_per_epoch))
    assert summary["worst_class_drop"] == max(float(r["recall_before"]) - float(r["recall_after"]) for r in classes)
    assert math.isfinite(summary["recall_distortion"])


def test_no_pruning_run_has_an_empty_class_table_and_no_summaries(tmp_path):
    execute(C.parse({**TINY, "pruning": {}}), tmp_path / "run")
    assert read_csv(tmp_path / "run" / "events_classes.csv") == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mean_flips"] is None and summary["recall_distortion"] is None  # NaN is written as null


def _row(epoch, layer, k, n, before, after, fl):
    return {"epoch": epoch, "layer": layer, "class": k, "count": n, "recall_before": before, "recall_after": after,
            "flips": fl}


def test_summaries_by_hand():
    # epoch 2: class 0 (40 examples, 50% -> 25%), class 1 (60, 100% -> 100%): accuracy 80% -> 70%
    # epoch 4: two layers pruned, the same table twice (counted once)
    e2 = [_row(2, "fc1", 0, 40, 50.0, 25.0, 30.0), _row(2, "fc1", 1, 60, 100.0, 100.0, 0.0)]
    e4 = [_row(4, layer, k, n, 90.0, 90.0, 10.0) for layer in ("fc1", "fc2") for k, n in ((0, 40), (1, 60))]
    events = [{"epoch": e, "units_removed": n, "acc_before": 0.0, "acc_after": 0.0}
              for e, n in ((2, 3), (4, 1), (4, 2))]
    out = summarize_classes(e2 + e4, events, scratch=False)
    assert out["mean_flips"] == pytest.approx((0.4 * 30.0 + 0.0 + 10.0) / 2)
    assert out["worst_class_drop"] == 25.0
    # d_0 = (25/70)/(50/80) = 4/7 (below accuracy: s = -1 -> 3/7); d_1 = (100/70)/(100/80) = 8/7 (s = +1 -> 1/7)
    assert distortion_terms(e2) == pytest.approx([3 / 7, 1 / 7])
    assert distortion_terms(e4[:2]) == [0.0, 0.0]  # every class at the accuracy
    assert out["recall_distortion"] == pytest.approx((3 / 7 + 1 / 7 + 0 + 0) / 4)


def test_scratch_event_and_empty_events_are_left_out():
    rows = [_row(0, "fc1", 0, 10, 10.0, 0.0, 50.0)]
    events = [{"epoch": 0, "units_removed": 5, "acc_before": 10.0, "acc_after": 0.0}]
    assert math.isnan(summarize_classes(rows, events, scratch=True)["mean_flips"])
    assert summarize_classes(rows, events, scratch=False)["mean_flips"] == 50.0
    assert math.isnan(summarize_classes(rows, [{**events[0], "units_removed": 0}], scratch=False)["mean_flips"])


def test_a_class_whose_recall_equals_the_accuracy_has_no_sign_despite_rounding():
    """r_k = A exactly (6/11 = 54/99) can differ in the last bit as percentages, which gave the term a sign (an
    audit, 2026-12-07: -0.142857 where the definition gives 0)."""
    from fractions import Fraction

    n, b = [11, 37, 18], [6, 29, 1]
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(n)])
    before = y.clone()
    for c, r in enumerate(b):
        before[(y == c).nonzero().flatten()[r:]] = (c + 1) % 3
    after = before.clone()
    after[0] = 1
    rows = class_table(y, before, after)
    terms = distortion_terms(rows)
    assert terms[0] == 0.0  # 6/11 = 36/66: exactly the accuracy
    correct_after = [sum(1 for i in range(len(y)) if y[i] == c and after[i] == c) for c in range(3)]
    acc_b, acc_a = Fraction(sum(b), sum(n)), Fraction(sum(correct_after), sum(n))
    exact = [(Fraction(ca, k) / acc_a) / (Fraction(cb, k) / acc_b) - 1 for k, cb, ca in zip(n, b, correct_after)]
    assert terms[1:] == pytest.approx([float(exact[1]), -float(exact[2])])
