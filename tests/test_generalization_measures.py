"""The report's "Generalization measures" section: granulated τ against a hand example, τ of a measure against
itself, and the section and class-detail figure in the report of a synthetic study (no training; a real `mini`
Figure 2 study takes hours, so the report is tested on synthetic runs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gstlab.analysis import figures, stats
from gstlab.analysis.measures import _psi, granulated_tau, least_stable, measure_rows, probe_notes, study_axes
from gstlab.analysis.report import write_report
from gstlab.class_detail import CLASS_COLUMNS
from gstlab.store import read_json_or_none, write_csv, write_json
from test_analysis import make_study, seal  # the synthetic study of the report tests


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(stats, "BOOTSTRAP_RESAMPLES", 40)
    monkeypatch.setattr(figures, "FORMATS", ("png",))


def test_granulated_tau_by_hand_and_of_a_measure_against_itself():
    runs = pd.DataFrame({"side": ["smallest", "largest", "smallest", "largest"], "iterative_rate": [1, 1, 13, 13],
                         "x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 1.0, 0.0]})
    axes = study_axes(runs)
    assert axes == ["side", "iterative_rate"]
    # side varies within rate 1: tau(+1) and rate 13: tau(-1) -> psi_side = 0; rate varies within smallest:
    # y constant (Jiang's tau: the tied pair counts 0) and largest: tau(-1) -> psi_rate = -1/2; Psi = -1/4
    psi, per_axis = granulated_tau(runs, "x", "y", axes)
    assert per_axis == {"side": 0.0, "iterative_rate": -0.5} and psi == -0.25
    assert granulated_tau(runs, "x", "x", axes) == (1.0, {"side": 1.0, "iterative_rate": 1.0})
    assert math.isnan(granulated_tau(runs, "x", "y", [])[0])


def test_granulated_tau_is_jiangs_tau_a_over_every_group_where_the_axis_varies():
    """Jiang et al.'s eq. 3 counts a tied pair 0 (scipy's tau_b divides it out) and eq. 4 averages every group;
    a group whose measure is constant gives 0, not a group left out (an audit, 2026-12-07: 0.8165 for 1/3)."""
    from gstlab.analysis.measures import tau_a

    runs = pd.DataFrame({"criterion": ["l2"] * 3 + ["l1"] * 3, "iterative_rate": [1, 5, 13] * 2,
                         "m": [1.0, 2.0, 3.0, 7.0, 7.0, 7.0], "gap": [1.0, 2.0, 2.0, 1.0, 2.0, 3.0]})
    assert tau_a([1.0, 2.0, 3.0], [1.0, 2.0, 2.0]) == pytest.approx(2 / 3)  # pairs: +1, +1, 0
    psi, per_axis = granulated_tau(runs, "m", "gap", ["criterion", "iterative_rate"])
    assert per_axis["iterative_rate"] == pytest.approx(1 / 3)  # (2/3 + 0) / 2


def test_runs_without_a_value_do_not_make_an_axis_vary_in_their_group():
    """The axis was checked for variation before runs without the measure were dropped, so a group left with one
    setting gave a tau over seeds alone (an audit: Psi 0.25 where the definition gives 0.5)."""
    rows = [("l2", 1, 1.0, 1.0), ("l2", 1, 2.0, 2.0), ("l2", 13, 3.0, 3.0), ("l2", 13, 4.0, 4.0),
            ("l1", 1, 2.0, 1.0), ("l1", 1, 1.0, 2.0), ("l1", 13, math.nan, 3.0), ("l1", 13, math.nan, 4.0)]
    runs = pd.DataFrame(rows, columns=["criterion", "iterative_rate", "m", "gap"])
    assert granulated_tau(runs, "m", "gap", study_axes(runs)) == (0.5, {"criterion": 0.0, "iterative_rate": 1.0})


def test_columns_that_split_the_runs_alike_are_one_axis_and_inseparable_axes_are_named():
    """index.csv's period beside a gridded pruning.period: each fixed the other, so the grid's only axis gave
    no psi, unsaid (an audit, 2026-12-07)."""
    rows = [{"criterion": c, "period": p, "pruning.period": p, "seed": s}
            for c in ("l2", "random") for p in (2, 4) for s in range(3)]
    runs = pd.DataFrame(rows)
    runs["y"] = runs["period"] + 0.1 * runs["seed"] + (runs["criterion"] == "l2")
    axes = study_axes(runs, {"pruning.period": [2, 4]})
    assert axes == ["criterion", "period = pruning.period"]
    assert granulated_tau(runs, "y", "y", axes) == (1.0, {"criterion": 1.0, "period = pruning.period": 1.0})
    xor = pd.DataFrame({"a": [0, 0, 1, 1] * 2, "b": [0, 1, 0, 1] * 2, "c": [0, 1, 1, 0] * 2,  # c moves with a, b
                        "y": np.arange(8.0), "generalization_gap": np.arange(8.0) % 3})
    (row,) = [r for r in measure_rows(xor.rename(columns={"y": "mean_stability"}), ["a", "b", "c"],
                                      "generalization_gap")]
    assert row["no_psi"] == ["a", "b", "c"] and "n/a (no ψ for a, b, c: never varying" in _psi(row)


def test_psi_merges_columns_anew_over_the_runs_that_have_the_measure_and_ignores_infinite_values():
    """A measure only two settings record: over those runs criterion and side split alike (a review: groups 0,
    Psi n/a unsaid); an infinite value had made every psi NaN."""
    runs = pd.DataFrame({"criterion": ["l1", "l1", "l2", "l2"] * 2, "side": ["smallest", "largest"] * 4,
                         "generalization_gap": np.arange(8.0),
                         "distance_init": [1.0, np.nan, np.nan, 4.0, 5.0, np.nan, np.nan, 8.0],
                         "recall_distortion": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, np.inf]})
    rows = {r["column"]: r for r in measure_rows(runs, ["criterion", "side"], "generalization_gap")}
    assert rows["distance_init"]["per_axis"] == {"criterion = side": 1.0}
    assert rows["recall_distortion"]["psi"] == 1.0  # the inf run left out, as by the correlation


def test_measure_rows_sorted_by_abs_tau_with_n():
    rng = np.random.default_rng(0)
    gap = rng.normal(size=12)
    runs = pd.DataFrame({"generalization_gap": gap, "mean_stability": gap + rng.normal(0, 0.1, 12),
                         "distance_init": -gap + rng.normal(0, 2.0, 12), "mean_flips": [np.nan] * 10 + [1.0, 2.0],
                         "side": ["smallest", "largest"] * 6})
    rows = measure_rows(runs, ["side"], "generalization_gap")
    assert [r["column"] for r in rows] == ["mean_stability", "distance_init"]  # flips: only 2 runs
    assert abs(rows[0]["kendall_tau"]) >= abs(rows[1]["kendall_tau"]) and rows[0]["n"] == 12
    assert rows[0]["kendall_tau"] == pytest.approx(stats.correlation(runs["mean_stability"], gap)["kendall_tau"])


def _add_class_detail(runs: pd.DataFrame) -> None:
    """events_classes.csv per pruned run (class 0 loses what the event costs), and summary measures."""
    for i, run_dir in enumerate(runs["run_dir"]):
        events = pd.read_csv(f"{run_dir}/events.csv")
        rows = [{"epoch": int(e["epoch"]), "layer": e["layer"], "class": k, "count": 50,
                 "recall_before": float(e["acc_before"]),
                 "recall_after": float(e["acc_after"]) - (5.0 if k == 0 else -5.0) * (e["acc_before"] > e["acc_after"]),
                 "flips": 3.0} for _, e in events.iterrows() for k in (0, 1)]
        write_csv(Path(run_dir) / "events_classes.csv", rows, CLASS_COLUMNS)
        summary_path = Path(run_dir) / "summary.json"
        summary = read_json_or_none(summary_path)
        write_json(summary_path, {**summary, "mean_flips": 1.0 + i % 5, "memorization": float(i)})
        seal(Path(run_dir))  # the checksums a real run's manifest has for these files


def test_report_has_the_generalization_measures_section_and_class_figure(tmp_path):
    study = make_study(tmp_path / "s", "figure2", probes=True)
    index = pd.read_csv(study / "index.csv")
    finished = index[index["status"] == "finished"]
    _add_class_detail(finished)
    text = write_report(study).read_text()
    assert "## Generalization measures" in text
    body = text.split("## Generalization measures")[1].split("\n## ")[0]
    assert "### vs generalization gap" in body and "### vs best test accuracy" in body
    for name in ("mean stability (%)", "mean prediction flips (%)", "Σ top-k Hessian eigenvalues",
                 "gradient second-moment trace", "memorization (%)"):
        assert f"| {name} | {len(finished)} |" in body, name
    assert "prunability (kept fraction)" in body.split("Not available")[1]  # the synthetic probes have none
    assert (study / "report" / "class_detail.png").stat().st_size > 0
    assert "class_detail.png" in text


def test_least_stable_events_first_one_per_run_and_scratch_left_out():
    events = pd.DataFrame({"run_id": ["a", "a", "b", "s"], "epoch": [2, 4, 2, 0], "layer": ["l"] * 4,
                           "units_removed": [1, 1, 1, 1], "acc_before": [80.0, 80.0, 80.0, 80.0],
                           "acc_after": [79.0, 70.0, 75.0, 10.0]})
    classes = pd.DataFrame([{"run_id": r, "epoch": e, "layer": "l", "class": 0, "count": 1, "recall_before": 1.0,
                             "recall_after": 1.0, "flips": 0.0} for r, e in (("a", 2), ("a", 4), ("b", 2), ("s", 0))])
    runs = pd.DataFrame({"run_id": ["a", "b", "s"], "scratch": [False, False, True]})
    got = [(e["run_id"], e["epoch"]) for e, _ in least_stable(events, classes, runs, k=3)]
    assert got == [("a", 4), ("b", 2)]  # one event per run, its worst; the scratch event is not a pruning epoch


def test_an_unpruned_runs_missing_side_is_a_value_of_the_side_axis():
    """index.csv leaves an unpruned run's side empty: read as NaN, pandas 3 dropped it from nunique and groupby,
    so No Pruning vs Prune_L was no axis and the unpruned runs left every group."""
    runs = pd.DataFrame({"side": [np.nan] * 4 + ["largest"] * 4, "optim.lr": [0.1, 0.1, 0.01, 0.01] * 2,
                         "x": [1.0, 2, 3, 4, 5, 6, 7, 8], "y": [1.0, 2, 3, 4, 5, 6, 7, 8]})
    axes = study_axes(runs, ["optim.lr"])
    assert axes == ["side", "optim.lr"]
    assert granulated_tau(runs, "x", "y", axes) == (1.0, {"side": 1.0, "optim.lr": 1.0})


def test_probe_notes_name_capped_solvers_unrecorded_convergence_and_mixed_settings():
    last = pd.DataFrame({"run_id": list("abcd"), "method": "lanczos", "k": [20, 20, 20, 5], "samples": 512,
                         "converged": [True, "False", "", "True"], "max_rel_residual": [1e-9, 0.031, None, 1e-8]})
    notes = probe_notes(last)
    assert notes[0].startswith("Flatness: 1 of 4 runs' last probes stopped at the eigensolver's step cap before "
                               "converging, largest relative Ritz residual 0.031;")
    assert notes[1].startswith("Flatness: 1 of 4 runs' last probes do not record whether the eigensolver converged")
    assert "(method lanczos, k 20, samples 512: 3 runs; method lanczos, k 5, samples 512: 1 runs)" in notes[2]
    assert probe_notes(last.iloc[[0, 3]].assign(k=20)) == [] and probe_notes(last.iloc[:0]) == []


def test_a_measure_equal_in_every_run_says_why_it_has_no_correlation():
    from gstlab.analysis.measures import section

    runs = pd.DataFrame({"run_id": list("abcd"), "generalization_gap": [1.0, 2.0, 3.0, 4.0],
                         "best_test_acc": [80.0, 81.0, 79.0, 82.0], "mean_flips": [2.5] * 4,
                         "side": ["smallest", "largest"] * 2})
    text = section(runs, pd.DataFrame())
    assert "The same in every run, so Kendall τ and Pearson r are n/a (Jiang's τ counts the ties 0): mean " \
           "prediction flips (%) (2.500)." in text
