"""Study loading, statistics and reports on a synthetic study directory (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from gstlab import analysis, recovery
from gstlab.analysis import figures, stats
from gstlab.analysis.report import corr_verdict, report_runs, write_report
from gstlab.analysis.results import last_probes, load_curvature, load_epochs, load_eps, load_events, load_study
from gstlab.analysis.summary import summarize
from gstlab.probes import CURVATURE_COLUMNS, EPS_COLUMNS
from gstlab.store import EVENT_COLUMNS, METRIC_COLUMNS, write_csv, write_json

EPOCHS = 12
PRUNE_EPOCHS = (2, 4, 6)
INDEX_COLUMNS = ("run_id", "setting", "label", "seed", "arch", "criterion", "side", "period", "iterative_rate",
                 "intervention", "batches", "run_dir", "status")

# (setting, label, side, intervention, instability % per event, scratch)
FIG2 = [("F2_VGG_0", "No Pruning", "", "none", 0.0, False), ("F2_VGG_1", "Prune_S 1%", "smallest", "none", 0.3, False),
        ("F2_VGG_2", "Prune_S 13%", "smallest", "none", 1.5, False),
        ("F2_VGG_3", "Prune_R 13%", "random", "none", 2.5, False),
        ("F2_VGG_4", "Prune_L 13%", "largest", "none", 5.0, False),
        ("F2_VGG_5", "Scratch Pruning", "smallest", "none", 0.0, True)]
FIG5 = [("F2_VGG_0", "No Pruning", "", "none", 0.0, False), ("F5_0", "Prune_L", "largest", "none", 5.0, False),
        ("F5_1", "Zeroing 1", "largest", "zero", 3.0, False), ("F5_2", "Zeroing 50", "largest", "zero", 6.0, False),
        ("F5_4", "Gaussian 1", "largest", "gaussian", 3.5, False),
        ("F5_5", "Gaussian 50", "largest", "gaussian", 6.5, False)]

FIG3 = [(f"F3_{t}_{r}", f"Prune_{t} {r}%", side, "none", instab * r / 13, False, r)
        for t, side, instab in (("S", "smallest", 0.5), ("R", "random", 1.5), ("L", "largest", 4.0))
        for r in (1.32, 12.86, 45.0)]


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """Fewer bootstrap resamples and PNG only (one test checks the PDFs): keeps the file under 20 s."""
    monkeypatch.setattr(stats, "BOOTSTRAP_RESAMPLES", 40)
    monkeypatch.setattr(figures, "FORMATS", ("png",))


def _run(rng, instab: float, slope: float, scratch: bool, pruning: bool) -> tuple[list, list, dict]:
    """metrics/events rows of one synthetic run; best accuracy = 85 + slope * (100 - stability) + noise."""
    drop = max(instab + rng.normal(0, 0.05 * (instab > 0)), 0.0)
    events = [{"epoch": e, "layer": "features.8", "action": "prune", "units_removed": 4, "acc_before": 80.0,
               "acc_after": float(80.0 * (1 - drop / 100))} for e in PRUNE_EPOCHS] if pruning and not scratch else []
    if scratch:
        events = [{"epoch": 0, "layer": "features.8", "action": "prune", "units_removed": 4, "acc_before": 10.0,
                   "acc_after": 10.0}]
    best = 85.0 + slope * drop + rng.normal(0, 0.05)
    gap = 8.0 - 0.5 * drop + rng.normal(0, 0.05)
    test = np.minimum(np.linspace(70, best, EPOCHS) + rng.normal(0, 0.2, EPOCHS), best)
    test[9] = best
    metrics = [{"epoch": e, "lr": 1e-3, "train_acc": float(t + gap), "train_loss": 0.5, "test_acc_pre": float(t),
                "test_acc": float(t), "test_loss": 0.6, "units_pruned": 0, "units_removed": 0, "wall_s": 0.1}
               for e, t in enumerate(test)]
    return metrics, events, summarize(metrics, events, scratch)


def _probes(rng, stability: float) -> tuple[list, list]:
    eig_sum = float(200.0 + 30.0 * (stability - 90.0) + rng.normal(0, 2))
    eig = np.sort(np.append(rng.dirichlet(np.ones(19)) * eig_sum * 1.01, -0.01 * eig_sum))[::-1].tolist()
    curv = [{"epoch": epoch, "trigger": "epoch", "seed": 7, "eig_sum": eig_sum * (1 + epoch / 100),
             "eig_max": eig[0], "eigenvalues": eig, "grad_moment_trace": 10 * eig_sum, "tic": 10.0,
             "delta_w": 1 / eig_sum} for epoch in (5, EPOCHS - 1)]
    eps = [{"epoch": EPOCHS - 1, "direction": d, "eps": x, "loss": 0.5 + eig[d] * x * x, "acc": 80.0,
            "base_loss": 0.5} for d in range(4) for x in np.round(np.linspace(-0.2, 0.2, 9), 2).tolist()]
    return curv, eps


@pytest.fixture
def no_draw(monkeypatch):
    """Build the figures but do not render them (for tests about the numbers, not the pictures)."""
    def save(fig, stem):
        png = stem.with_name(f"{stem.name}.png")
        png.write_bytes(b"")
        return png

    monkeypatch.setattr(figures, "save", save)


def seal(run_dir: Path) -> None:
    """The final manifest a run gets: its status and the checksums that readers verify its files against."""
    status = json.loads((run_dir / "summary.json").read_text())["status"]
    write_json(run_dir / "manifest.json", {"status": status, "files": recovery.checksums(run_dir)})


def make_study(root, figure: str, settings=FIG2, slope: float = 0.8, seeds: int = 4, probes: bool = False,
               archs=("vgg11_bn",), failed: bool = True):
    """A study directory with one run per setting x arch x seed (+ one failed and one pending run)."""
    rng = np.random.default_rng(1234)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({"name": f"synthetic_{figure}", "figure": figure,
                                                     "scale": "smoke", "seeds": seeds}))
    index = []
    for arch in archs:
        for i, (setting, label, side, kind, instab, scratch, *extra) in enumerate(settings):
            for seed in range(seeds):
                run_id = f"{arch}_{i}s{seed}"
                run_dir = root / "runs" / run_id
                metrics, events, summary = _run(rng, instab, slope, scratch, pruning=side != "")
                write_csv(run_dir / "metrics.csv", metrics, METRIC_COLUMNS)
                write_csv(run_dir / "events.csv", events, EVENT_COLUMNS)
                remaining = 1000 if side == "" else 700
                write_json(run_dir / "summary.json", {"status": "finished", "run_id": run_id, **summary,
                                                      "params_total": 1000, "params_remaining": remaining})
                (run_dir / "config.yaml").write_text(yaml.safe_dump({"pruning": {"scratch": scratch}}))
                if probes:
                    curv, eps = _probes(rng, summary["mean_stability"])
                    write_csv(run_dir / "curvature.csv", curv, CURVATURE_COLUMNS)
                    write_csv(run_dir / "eps_sweep.csv", eps, EPS_COLUMNS)
                seal(run_dir)
                rate = (extra[0] if extra else 90 / (1 + i)) if side else ""
                index.append({"run_id": run_id, "setting": setting, "label": label, "seed": seed, "arch": arch,
                              "criterion": "l2" if side else "", "side": side, "period": 40 if side else "",
                              "iterative_rate": rate, "intervention": kind, "batches": 0, "run_dir": str(run_dir),
                              "status": "finished"})
    if failed:
        bad = root / "runs" / "failed0"
        write_csv(bad / "metrics.csv", [], METRIC_COLUMNS)
        write_json(bad / "summary.json", {"status": "failed", "run_id": "failed0", "failure": "loss diverged (nan)",
                                          **summarize([], [], False)})
        seal(bad)
        index.append({**index[-1], "run_id": "failed0", "seed": 99, "run_dir": str(bad), "status": "failed"})
        index.append({**index[-1], "run_id": "pending0", "seed": 98, "run_dir": str(root / "runs" / "pending0"),
                      "status": "pending"})
    pd.DataFrame(index, columns=INDEX_COLUMNS).to_csv(root / "index.csv", index=False)
    return root


# ------------------------------------------------------------------------------------------------ loading


def test_load_study_one_row_per_run_with_summary(tmp_path):
    study = make_study(tmp_path / "s", "figure2", probes=True)
    df = analysis.load_study(study)
    n = len(FIG2) * 4 + 2
    assert len(df) == n and df["run_id"].is_unique
    for col in ("mean_stability", "best_test_acc", "generalization_gap", "params_remaining_pct", "status", "scratch"):
        assert col in df
    ok = df[df["status"] == "finished"]
    assert len(ok) == n - 2 and ok["best_test_acc"].notna().all()
    assert df.set_index("run_id").loc["failed0", "status"] == "failed"
    assert df.set_index("run_id").loc["pending0", "status"] == "pending"
    assert math.isnan(df.set_index("run_id").loc["pending0", "best_test_acc"])
    assert df.loc[df["label"] == "Scratch Pruning", "scratch"].all() and not df.loc[df["label"] != "Scratch Pruning",
                                                                                    "scratch"].any()
    summary = json.loads((study / "runs" / ok["run_id"].iloc[3] / "summary.json").read_text())
    assert ok["mean_stability"].iloc[3] == pytest.approx(summary["mean_stability"])
    assert (df.loc[df["label"] == "No Pruning", "mean_stability"] == 100).all()


def test_long_tables_prepend_run_columns(tmp_path):
    study = make_study(tmp_path / "s", "figure6", probes=True)
    runs = load_study(study)
    epochs, events = load_epochs(study), load_events(study, runs)
    curv, eps = load_curvature(study, runs), load_eps(study)
    assert list(epochs.columns[:4]) == ["run_id", "setting", "label", "seed"]
    assert len(epochs) == len(FIG2) * 4 * EPOCHS  # the failed run's metrics.csv is empty, pending has none
    assert set(METRIC_COLUMNS) <= set(epochs.columns) and set(EVENT_COLUMNS) <= set(events.columns)
    assert len(curv) == len(FIG2) * 4 * 2 and "eig_sum" in curv and (curv["probe_seed"] == 7).all()
    assert len(eps) == len(FIG2) * 4 * 4 * 9
    assert load_curvature(make_study(tmp_path / "t", "figure2")).empty


# ------------------------------------------------------------------------------------------------ statistics

X = np.array([98.1, 99.0, 97.2, 99.6, 96.4, 98.8, 97.9, 99.3, 96.9, 98.4])
Y = np.array([85.6, 85.1, 85.9, 84.8, 86.3, 85.0, 85.4, 85.2, 85.7, 85.5])


def test_mean_ci_is_the_t_interval():
    ci = stats.mean_ci(X)
    low, high = sps.t.interval(0.95, len(X) - 1, loc=X.mean(), scale=sps.sem(X))
    assert ci["n"] == 10 and ci["mean"] == pytest.approx(X.mean()) and ci["std"] == pytest.approx(X.std(ddof=1))
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((low, high))
    one = stats.mean_ci([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["ci_low"]) and math.isnan(one["std"])
    assert stats.mean_ci([np.nan, 2.0, 4.0])["n"] == 2 and stats.mean_ci([])["n"] == 0


def test_correlation_matches_scipy(monkeypatch):
    monkeypatch.setattr(stats, "BOOTSTRAP_RESAMPLES", 400)
    c = stats.correlation(X, Y)
    pr, kt = sps.pearsonr(X, Y), sps.kendalltau(X, Y)
    ci = pr.confidence_interval()
    assert c["n"] == 10
    assert (c["pearson_r"], c["pearson_p"]) == pytest.approx((pr.statistic, pr.pvalue))
    assert (c["pearson_ci_low"], c["pearson_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert (c["kendall_tau"], c["kendall_p"]) == pytest.approx((kt.statistic, kt.pvalue))
    boot = sps.bootstrap((X, Y), lambda a, b: sps.kendalltau(a, b).statistic, paired=True, vectorized=False,
                         n_resamples=stats.BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert (c["kendall_ci_low"], c["kendall_ci_high"]) == pytest.approx(
        (boot.confidence_interval.low, boot.confidence_interval.high))
    assert -1 <= c["kendall_ci_low"] <= c["kendall_tau"] <= c["kendall_ci_high"] <= 1


@pytest.mark.parametrize("x,y", [([1.0, 2.0], [3.0, 4.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([], [])])
def test_correlation_degenerate_gives_nan(x, y):
    c = stats.correlation(x, y)
    assert c["n"] == len(x) and all(math.isnan(v) for k, v in c.items() if k != "n")


def test_ttest_matches_scipy_student():
    t = stats.ttest(X, Y)
    ref = sps.ttest_ind(X, Y, equal_var=True)
    assert (t["t"], t["p"], t["df"]) == pytest.approx((ref.statistic, ref.pvalue, 18))
    assert (t["mean_a"], t["mean_b"]) == pytest.approx((X.mean(), Y.mean()))
    assert math.isnan(stats.ttest([1.0], [2.0])["p"])


def test_ttest_effect_size_by_hand():
    """[1, 2, 3] vs [4, 5, 6, 7]: difference -3.5, pooled variance (2 + 5) / 5 = 1.4, df 5."""
    t = stats.ttest([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    half = 2.5705818366147395 * math.sqrt(1.4 * (1 / 3 + 1 / 4))  # t_{0.975, 5}
    assert t["diff"] == pytest.approx(-3.5)
    assert (t["diff_ci_low"], t["diff_ci_high"]) == pytest.approx((-3.5 - half, -3.5 + half))
    assert t["cohens_d"] == pytest.approx(-3.5 / math.sqrt(1.4))
    assert t["t"] == pytest.approx(-3.5 / math.sqrt(1.4 * (1 / 3 + 1 / 4)))


def test_group_table():
    df = pd.DataFrame({"label": ["a"] * 10 + ["b"], "v": [*X, 5.0]})
    table = stats.group_table(df, "label", ["v"])
    assert list(table["label"]) == ["a", "b"] and list(table["n"]) == [10, 1]
    assert table.loc[0, "v_ci_low"] == pytest.approx(stats.mean_ci(X)["ci_low"])
    assert math.isnan(table.loc[1, "v_ci_low"]) and table.loc[1, "v_mean"] == 5.0


def test_verdicts():
    assert corr_verdict(-0.8, 0.001, -1) == "supported"
    assert corr_verdict(-0.2, 0.4, -1) == "consistent but not significant"
    assert corr_verdict(0.0, 0.9, -1) == "not supported" and corr_verdict(0.5, 0.01, -1) == "not supported"
    assert corr_verdict(math.nan, math.nan, -1) == "not testable"


# ------------------------------------------------------------------------------------------------ reports


def _pngs(report_dir):
    return sorted(p.name for p in report_dir.glob("*.png"))


def test_report_figure2_supported(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FORMATS", ("png", "pdf"))
    md = write_report(make_study(tmp_path / "s", "figure2", slope=0.8))
    text, out = md.read_text(), md.parent
    assert md.name == "report.md" and "synthetic_figure2" in text
    for name in ("runs.csv", "epochs.csv", "events.csv", "dynamics.png", "dynamics.pdf", "stability_accuracy.png"):
        assert (out / name).exists(), name
    assert not (out / "curvature.csv").exists()
    assert "**Tradeoff**" in text and "verdict: **supported**" in text
    assert "n = 12 runs" in text  # Prune_S 1%, Prune_S 13%, Prune_L 13% x 4 seeds (no Prune_R, scratch, baseline)
    assert "**Generalization gap**" in text and "1 failed" in text and "failed0" in text and "loss diverged" in text
    assert "![" in text and "(dynamics.png)" in text
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(FIG2) * 4 + 2
    index = pd.read_csv(tmp_path / "s" / "index.csv").set_index("run_id")["run_dir"]
    for run_id, run_dir in zip(runs["run_id"], runs["run_dir"]):  # relative to the report, pointing at the run
        assert not os.path.isabs(run_dir) and (out / run_dir).resolve() == Path(index[run_id]).resolve()


def test_report_runs_reads_the_finished_runs_from_the_study_or_its_runs_csv(tmp_path, no_draw):
    md = write_report(make_study(tmp_path / "s", "figure2"))
    from_dir, from_csv = report_runs(tmp_path / "s"), report_runs(md.parent / "runs.csv")
    assert len(from_dir) == len(FIG2) * 4 and set(from_dir["status"]) == {"finished"}  # not the failed, pending
    assert from_dir.equals(from_csv)


def test_report_figure2_not_supported_when_positive(tmp_path, no_draw):
    text = write_report(make_study(tmp_path / "s", "figure2", slope=-0.8)).read_text()
    tradeoff = next(line for line in text.splitlines() if "**Tradeoff**" in line)
    assert "verdict: **not supported**" in tradeoff


def test_report_figure5_noise(tmp_path):
    md = write_report(make_study(tmp_path / "s", "figure5", settings=FIG5))
    text = md.read_text()
    assert {"dynamics_zero.png", "dynamics_gaussian.png"} <= set(_pngs(md.parent))
    noise = [line for line in text.splitlines() if "**Noise**" in line]
    assert len(noise) == 4 and all("verdict: **supported**" in line for line in noise)
    assert "Zeroing 50" in text and "n = 4 vs 4 runs" in text


def test_report_figure6_flatness(tmp_path):
    md = write_report(make_study(tmp_path / "s", "figure6", probes=True))
    text, pngs = md.read_text(), set(_pngs(md.parent))
    assert {"stability_eig_sum.png", "eig_sum_accuracy.png", "stability_grad_moment_trace.png",
            "E1_eigenvalues.png", "E2_spectrum.png", "E4_eps.png"} <= pngs
    assert (md.parent / "curvature.csv").exists()
    flat = next(line for line in text.splitlines() if "**Flatness**" in line)
    assert "verdict: **supported**" in flat and "n = 24 runs" in flat


@pytest.mark.parametrize("kind", ["figure3", "figure4", "figureD2", "figureC3", "tableC1", "tableF1", "generic"])
def test_report_other_kinds(tmp_path, kind, request):
    request.getfixturevalue("no_draw")  # the figures are built, not rendered
    settings = {"figureD2": [*FIG5[:2], ("FD2_0", "Zeroing 89", "largest", "zero_restore", 4.0, False)],
                "tableF1": [FIG2[0], ("TF1_1", "Prune_L 15%", "largest", "none", 4.0, False),
                            ("TF1_2", "Prune_S 15%", "smallest", "none", 0.5, False),
                            ("TF1_3", "Scratch 15%", "largest", "none", 0.0, True)],
                "figure3": FIG3}.get(kind, FIG2)
    archs = ("resnet18", "resnet20") if kind == "figure4" else ("vgg11_bn",)
    md = write_report(make_study(tmp_path / kind, kind, settings=settings, seeds=2, archs=archs, failed=False))
    text = md.read_text()
    assert "verdict:" in text and "## Runs per label" in text and _pngs(md.parent)
    if kind == "tableF1":
        assert "Prune_L vs Prune_S" in text and "Prune_L vs Scratch" in text
    if kind == "figure4":
        assert {"stability_accuracy_resnet18.png", "stability_gap_resnet20.png"} <= set(_pngs(md.parent))
    if kind == "figure3":
        assert "figure3.png" in _pngs(md.parent)


def test_figure3_groups_rates_equal_up_to_rounding_and_leaves_out_scratch_runs(tmp_path, no_draw):
    """100 * 0.5 / 10 and 100 * 0.55 / 11 are one rate; a scratch run has none (it crashed the panels)."""
    settings = [*FIG3, ("F3_S_near", "Prune_S 12.86% (other schedule)", "smallest", "none", 0.5, False,
                        12.86 + 1e-12), ("F3_scratch", "Scratch Pruning", "largest", "none", 0.0, True, "")]
    md = write_report(make_study(tmp_path / "s", "figure3", settings=settings, seeds=3, failed=False))
    rates = [line for line in md.read_text().splitlines() if line.startswith("| iterative rate")]
    assert [line.split("|")[1].strip() for line in rates] == [
        "iterative rate 1.32%", "iterative rate 12.86%", "iterative rate 45.00%"]
    assert "| iterative rate 12.86% | mean_stability | best_test_acc | 12 |" in md.read_text()  # 4 labels x 3 seeds



def test_report_says_no_scale_when_no_setting_is_a_preset(tmp_path, no_draw):
    """``scale:`` sizes preset settings only: beside inline settings the report had printed it as the study's."""
    study = make_study(tmp_path / "s", "figure2", seeds=2, failed=False)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "settings": [{"inline": {}, "label": "x"}]}))
    assert "scale: none (no preset setting; each sets its own sizes)" in write_report(study).read_text()
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "settings": [{"preset": "F2_VGG_0"}]}))
    assert "scale: `smoke`" in write_report(study).read_text()


def _two_lr_points(study: Path) -> pd.DataFrame:
    """Put make_study's runs on a grid over optim.lr: even seeds at 0.001, odd ones at 0.0003."""
    index = pd.read_csv(study / "index.csv")
    index.insert(11, "optim.lr", np.where(index["seed"] % 2 == 0, 0.001, 0.0003))
    index.to_csv(study / "index.csv", index=False)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "grid": {"optim.lr": [0.001, 0.0003]}}))
    return index


def test_a_correlation_over_grid_points_says_it_pools_them(tmp_path, no_draw):
    """Within each point the tradeoff can hold while the pooled runs reverse it (an audit's Simpson's paradox,
    2026-12-06): a claim over runs of several points names the pooling."""
    study = make_study(tmp_path / "s", "figure2", seeds=4, failed=False)
    _two_lr_points(study)
    tradeoff = [line for line in write_report(study).read_text().splitlines() if line.startswith("- **Tradeoff**")]
    assert tradeoff and all("pooled over grid points (optim.lr: 0.001, 0.0003)" in line for line in tradeoff)
    plain = make_study(tmp_path / "p", "figure2", seeds=4, failed=False)
    assert "pooled over grid points" not in write_report(plain).read_text()


def test_a_pooled_correlation_is_followed_by_the_correlation_within_each_grid_point(tmp_path, no_draw):
    """The pooled r alone hid each point's (an audit's Simpson's paradox): each point's r, against scipy on that
    point's runs, is in the correlations table and beside the claim."""
    study = make_study(tmp_path / "s", "figure2", seeds=4, failed=False)
    _two_lr_points(study)
    text = write_report(study).read_text()
    runs = pd.read_csv(study / "report" / "runs.csv")
    keep = runs["side"].isin(["smallest", "largest"]) & ~runs["scratch"]  # Figure 2's: no Prune_R, no scratch
    claim = next(line for line in text.splitlines() if line.startswith("- **Tradeoff**"))
    for lr in ("0.001", "0.0003"):
        point = runs[keep & (runs["optim.lr"] == float(lr))]
        r = sps.pearsonr(point["mean_stability"], point["best_test_acc"])[0]
        assert f"optim.lr={lr}: r = {r:.3f}, n = {len(point)}" in claim
        row = f"| pruned runs, no scratch, no Prune_R; grid point optim.lr={lr} | mean_stability | best_test_acc |"
        assert f"{row} {len(point)} | {r:.3f} " in text
    plain = make_study(tmp_path / "p", "figure2", seeds=4, failed=False)
    assert "within each grid point" not in write_report(plain).read_text()


def test_grid_values_read_back_as_floats_are_named_as_the_study_wrote_them(tmp_path, no_draw):
    """index.csv's ``null`` and ``1000`` of one axis are read as NaN and 1000.0: labels said ``nan``, ``1000.0``."""
    from gstlab.analysis.text import value

    assert [value(v) for v in (float("nan"), None, 1000.0, 0.5, "sgd", 3, -2.0)] == [
        "null", "null", "1000", "0.5", "sgd", "3", "-2"]
    study = make_study(tmp_path / "s", "figure2", seeds=2, failed=False)
    index = pd.read_csv(study / "index.csv")
    index.insert(11, "data.max_train", np.where(index["seed"] == 0, 1000, None))
    index.to_csv(study / "index.csv", index=False)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "grid": {"data.max_train": [1000, None]}}))
    text = write_report(study).read_text()
    assert "| Prune_L 13% (data.max_train=1000) | 1 |" in text and "| Prune_L 13% (data.max_train=null) | 1 |" in text
    assert "than No Pruning (data.max_train=1000);" in text and "nan" not in text.replace("n/a", "")


def test_palette_gives_distinct_colours_to_any_number_of_labels():
    from gstlab.analysis.figures import palette

    ten = palette(range(10))
    for n in (15, 20, 25, 40):
        colours = palette(range(n))
        assert len(set(colours.values())) == n
        if n <= 20:
            assert all(colours[i] == ten[i] for i in range(10))  # a grid's first ten labels keep tab10's


def test_labels_name_their_grid_point_when_every_run_of_another_point_failed(tmp_path, no_draw):
    study = make_study(tmp_path / "s", "figure2", seeds=4, failed=False)
    index = _two_lr_points(study)
    for run_dir in index.loc[index["optim.lr"] == 0.0003, "run_dir"]:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        (Path(run_dir) / "summary.json").write_text(json.dumps({**summary, "status": "failed", "failure": "x"}))
        seal(Path(run_dir))
    text = write_report(study).read_text()
    assert "| Prune_L 13% (optim.lr=0.001) |" in text and "| Prune_L 13% |" not in text


def test_figure5_baselines_keep_their_grid_point_in_the_legend(tmp_path, monkeypatch):
    legends, real = {}, figures.save

    def save(fig, stem):
        legend = fig.axes[0].get_legend()
        legends[Path(stem).name] = [t.get_text() for t in legend.get_texts()] if legend else []
        return real(fig, stem)

    monkeypatch.setattr(figures, "save", save)
    study = make_study(tmp_path / "s", "figure5", settings=FIG5, seeds=4, failed=False)
    _two_lr_points(study)
    write_report(study)
    noise = [t for t in legends["dynamics_zero"] if "No Noise" in t]
    assert len(noise) == 2 and any("optim.lr=0.001" in t for t in noise) and any("optim.lr=0.0003" in t
                                                                                  for t in noise)

def test_report_single_seed_and_missing_study_yaml(tmp_path, no_draw):
    study = make_study(tmp_path / "s", "figure2", seeds=1, failed=False)
    (study / "study.yaml").unlink()
    text = write_report(study).read_text()
    assert "`generic`" in text and "n/a" in text  # single seed: no CI


def test_report_labels_name_varying_grid_points(tmp_path, no_draw):
    study = make_study(tmp_path / "s", "figure2", seeds=2, failed=False)
    index = pd.read_csv(study / "index.csv")
    index.insert(11, "optim.lr", np.where(index["seed"] == 0, 0.001, 0.0003))
    index.to_csv(study / "index.csv", index=False)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "grid": {"optim.lr": [0.001, 0.0003]}}))
    text = write_report(study).read_text()
    assert "| Prune_L 13% (optim.lr=0.001) | 1 |" in text and "| Prune_L 13% (optim.lr=0.0003) | 1 |" in text
    assert "optim.lr" in pd.read_csv(study / "report" / "runs.csv")


def test_benefit_is_tested_against_the_baseline_of_the_same_grid_point(tmp_path, no_draw):
    """The baseline was every unpruned run of the study, pooled over grid points (and its paired test dropped)."""
    study = make_study(tmp_path / "s", "figure2", seeds=4, failed=False)
    index = pd.read_csv(study / "index.csv")
    index.insert(11, "optim.lr", np.where(index["seed"] % 2 == 0, 0.001, 0.0003))
    index.to_csv(study / "index.csv", index=False)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "grid": {"optim.lr": [0.001, 0.0003]}}))
    text = write_report(study).read_text()
    runs = pd.read_csv(study / "report" / "runs.csv")
    base = runs[(runs["side"].isna()) & (runs["optim.lr"] == 0.001)]["best_test_acc"]
    line = next(x for x in text.splitlines() if x.startswith("- **Benefit** (Prune_L 13% (optim.lr=0.001) reaches"))
    assert "than No Pruning (optim.lr=0.001);" in line and f"vs {base.mean():.2f}%" in line
    assert "n = 2 vs 2 runs" in line
    assert "**Benefit, common window, paired** (Prune_L 13% (optim.lr=0.001)" in text  # one run per seed again


def test_a_study_without_a_baseline_says_the_benefit_is_not_tested(tmp_path, no_draw):
    text = write_report(make_study(tmp_path / "s", "figure2", settings=FIG2[1:], seeds=2, failed=False)).read_text()
    assert "- Benefit: not tested, no unpruned run to compare" in text and "**Benefit**" not in text


def test_dynamics_band_is_the_t_interval_from_three_seeds_and_the_range_below():
    two = figures._per_epoch(pd.DataFrame({"epoch": [0, 0], "test_acc": [80.0, 90.0]}), "test_acc")
    low, high, kind = figures._band(two)
    assert (low.iloc[0], high.iloc[0], kind) == (80.0, 90.0, "range over seeds")
    three = figures._per_epoch(pd.DataFrame({"epoch": [0, 0, 0], "test_acc": [80.0, 85.0, 90.0]}), "test_acc")
    low, high, kind = figures._band(three)
    expected = sps.t.interval(0.95, 2, loc=85.0, scale=sps.sem([80.0, 85.0, 90.0]))
    assert kind == "95% CI over seeds"
    assert low.iloc[0] == pytest.approx(max(expected[0], 0.0)) and high.iloc[0] == pytest.approx(min(expected[1], 100))


def test_posthoc_common_window_scores_every_run_after_the_latest_last_pruning_epoch():
    posthoc = _load_example("posthoc_fig2_fig6.py")
    runs = pd.DataFrame({"run_id": ["np", "pl"], "last_pruned_epoch": [0, 2]})
    epochs = pd.DataFrame({"run_id": ["np"] * 4 + ["pl"] * 4, "epoch": [0, 1, 2, 3] * 2,
                           "test_acc": [90.0, 80.0, 70.0, 75.0, 95.0, 60.0, 65.0, 62.0]})
    start, best = posthoc.common_window_best(runs, epochs)
    assert start == 2 and best.to_dict() == {"np": 75.0, "pl": 65.0}  # No Pruning's 90 at epoch 0 is outside


def test_posthoc_fig5_groups_leave_out_the_baseline_and_split_the_noise_kinds():
    posthoc = _load_example("posthoc_fig5.py")
    labels = ["No Pruning", "Prune_L", "Zeroing 1", "Zeroing 50", "Gaussian 1", "Gaussian 1105"]
    groups = posthoc.subsets(pd.DataFrame({"label": labels}))
    assert [sorted(g["label"]) for g in groups.values()] == [
        sorted(labels[1:]), sorted(labels[2:]), ["Zeroing 1", "Zeroing 50"], ["Gaussian 1", "Gaussian 1105"]]


def test_posthoc_fig3_keeps_runs_fit_at_their_best_epoch_by_train_accuracy_there():
    posthoc = _load_example("posthoc_fig3.py")
    # train accuracy at the best epoch = best test accuracy + gap: 100.0, 99.5 (kept, the bound), 94.0 (left out)
    runs = pd.DataFrame({"best_test_acc": [81.0, 80.0, 81.0], "generalization_gap": [19.0, 19.5, 13.0]})
    all_runs, fit = posthoc.subsets(runs).values()
    assert len(all_runs) == 3 and list(fit.index) == [0, 1]


def test_stats_lines_print_the_numbers_they_are_given():
    c = {"n": 30, "pearson_r": 0.5, "pearson_ci_low": 0.1, "pearson_ci_high": 0.8, "pearson_p": 0.004,
         "kendall_tau": 0.3, "kendall_p": 0.02}
    assert stats.correlation_line("x", c) == ("x: n = 30, Pearson r = 0.500 [0.100, 0.800], p = 0.004; "
                                              "Kendall tau = 0.300, p = 0.02")
    t = stats.ttest([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert stats.ttest_line("d", t).startswith("d: difference -1.00 [") and "df = 4" in stats.ttest_line("d", t)


def _load_example(name: str):
    path = Path(__file__).parents[1] / "examples" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_last_probes_keeps_each_runs_highest_epoch_whatever_the_row_order():
    curvature = pd.DataFrame({"run_id": ["b", "a", "a", "b"], "epoch": [314, 314, 100, 50],
                              "eig_sum": [4.0, 2.0, 1.0, 3.0]})
    last = last_probes(curvature)
    assert dict(zip(last["run_id"], last["eig_sum"])) == {"a": 2.0, "b": 4.0}
    no_epochs = pd.DataFrame({"run_id": ["c", "c"], "epoch": [float("nan")] * 2, "eig_sum": [1.0, 5.0]})
    assert last_probes(pd.concat([curvature, no_epochs]))["eig_sum"].tolist() == [2.0, 4.0, 5.0]


def test_last_probes_keeps_an_earlier_same_epoch_rows_optional_measures_the_last_row_skipped():
    nan = float("nan")
    curvature = pd.DataFrame({  # a: in-run probe with PAC-Bayes, then gst flatness without it at the same epoch
        "run_id": ["a", "a", "a", "b", "b"], "epoch": [100, 314, 314, 200, 314],
        "eig_sum": [9.0, 2.0, 5.0, 1.0, 3.0],
        "pac_bayes_drop": [10.0, 10.0, nan, 10.0, nan], "pac_bayes_flatness": [7.0, 4.0, nan, 8.0, nan],
        "prunability_delta": [nan, nan, 0.1, nan, nan], "prunability": [nan, nan, 0.6, nan, nan]})
    last = last_probes(curvature).set_index("run_id")
    assert last.loc["a", ["eig_sum", "pac_bayes_flatness", "prunability"]].tolist() == [5.0, 4.0, 0.6]
    # b's only PAC-Bayes value is from an earlier epoch (another model): not carried forward
    assert last.loc["b", "eig_sum"] == 3.0 and np.isnan(last.loc["b", "pac_bayes_flatness"])


def test_paired_ttest_by_hand_and_pairs_only_shared_seeds():
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 9.0], index=[10, 11, 12, 13, 14])
    b = pd.Series([0.0, 1.0, 1.0, 3.0, 5.0], index=[10, 11, 12, 13, 99])  # seed 14 / 99 have no partner
    t = stats.paired_ttest(a, b)
    # differences 1, 1, 2, 1: mean 1.25, sd 0.5, t = 1.25 / (0.5 / 2) = 5, d_z = 2.5
    assert (t["n_a"], t["df"]) == (4, 3)
    assert t["diff"] == pytest.approx(1.25) and t["t"] == pytest.approx(5.0) and t["cohens_d"] == pytest.approx(2.5)
    half = sps.t.ppf(0.975, 3) * 0.5 / 2
    assert (t["diff_ci_low"], t["diff_ci_high"]) == (pytest.approx(1.25 - half), pytest.approx(1.25 + half))
    assert t["p"] == pytest.approx(sps.ttest_rel([1, 2, 3, 4], [0, 1, 1, 3]).pvalue)


def test_common_window_scores_every_run_from_the_latest_last_pruning_epoch():
    from gstlab.analysis.window import common_window_start, with_window

    runs = pd.DataFrame({"run_id": ["np", "s", "l"], "last_pruned_epoch": [0, 2, 1], "side": ["", "s", "l"]})
    assert common_window_start(runs, runs["side"] != "") == 2
    assert common_window_start(runs, runs["side"] == "x") == 0
    epochs = pd.DataFrame({"run_id": ["np"] * 4 + ["s"] * 4 + ["l"] * 4, "epoch": [0, 1, 2, 3] * 3,
                           "test_acc": [90, 80, 70, 75, 60, 61, 66, 66, 50, 55, 52, 51.0],
                           "train_acc": [95, 99, 100, 100, 90, 91, 92, 93, 80, 81, 82, 83.0]})
    scored = with_window(runs, epochs, 2).set_index("run_id")
    assert scored["window_best_test_acc"].to_dict() == {"np": 75.0, "s": 66.0, "l": 52.0}  # 90 is outside
    assert scored["window_best_epoch"].to_dict() == {"np": 3, "s": 2, "l": 2}  # the first epoch reaching it
    assert scored["window_gap"].to_dict() == {"np": 25.0, "s": 26.0, "l": 30.0}


def test_report_figure2_scores_no_pruning_over_the_pruned_runs_window_and_shows_its_early_peak(tmp_path, no_draw):
    study = make_study(tmp_path / "s", "figure2", failed=False)
    for run_dir in (study / "runs").iterdir():  # No Pruning peaks early (label-noise-like), far above its window
        if run_dir.name.startswith("vgg11_bn_0s"):
            metrics = pd.read_csv(run_dir / "metrics.csv")
            metrics.loc[0, "test_acc"] = 99.0
            metrics.to_csv(run_dir / "metrics.csv", index=False)
            summary = json.loads((run_dir / "summary.json").read_text())
            summary.update(summarize(metrics.to_dict("records"), [], False))
            (run_dir / "summary.json").write_text(json.dumps(summary))
            seal(run_dir)
    text = write_report(study).read_text()
    own = [line for line in text.splitlines() if line.startswith("- **Benefit** (") and "Prune_L 13%" in line]
    window = [line for line in text.splitlines() if "**Benefit, common window**" in line and "Prune_L 13%" in line]
    paired = [line for line in text.splitlines() if "**Benefit, common window, paired**" in line]
    assert "mean 99.00%" not in own[0] and "vs 99.00%" in own[0]  # own window: No Pruning's early peak
    assert "vs 99.00%" not in window[0] and "common window (epochs ≥ 6)" in window[0]
    assert len(paired) == 3 and all("n = 4 pairs" in line for line in paired)
    assert "peak test accuracy over all epochs is 99.00%" in text
    runs = pd.read_csv(study / "report" / "runs.csv")
    assert set(runs["window_start"]) == {6}
    assert ("- common window: epochs ≥ 6, the latest last pruning epoch among the finished pruned runs (Prune_S 1%, "
            "Prune_S 13%, Prune_R 13%, Prune_L 13%)") in text and "may start earlier" not in text


def test_report_says_when_a_pruned_setting_without_finished_runs_could_move_the_common_window(tmp_path, no_draw):
    """The window starts at the latest last pruning epoch of the *finished* runs: with every run of the setting
    that prunes last failed or pending, it would start earlier than the study's schedule (an audit, 2026-12-06)."""
    study = make_study(tmp_path / "s", "figure2", failed=False)
    for run_dir in (study / "runs").glob("vgg11_bn_3s*"):  # every Prune_R 13% run failed
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "failed", "failure": "diverged"}))
        seal(run_dir)
    text = write_report(study).read_text()
    assert "- **no finished run of Prune_R 13%: the common window may start earlier than the study's schedule**" in text


def test_window_lines_name_a_grid_point_without_finished_runs_and_a_window_set_at_epoch_0():
    """A grid point of one setting whose runs all failed is named with its point (its label alone is shared with
    the finished points); pruning only at epoch 0 sets a window from epoch 0, not 'no finished run prunes'."""
    from gstlab.analysis.report import _window_lines

    runs = pd.DataFrame({"label": ["P", "P", "P", "P", "N"], "side": ["smallest"] * 4 + [""],
                         "optim.lr": [0.1, 0.1, 0.01, 0.01, 0.1], "status": ["finished"] * 2 + ["failed"] * 2 + [
                             "finished"], "last_pruned_epoch": [0, 0, 5, 5, None], "window_start": [0] * 5})
    assert _window_lines(runs, ("optim.lr",)) == [
        "- common window: epochs ≥ 0, the latest last pruning epoch among the finished pruned runs (P)",
        "- **no finished run of P (optim.lr=0.01): the common window may start earlier than the study's schedule**"]
    unpruned = runs.assign(side="", last_pruned_epoch=None)
    assert _window_lines(unpruned, ()) == ["- common window: every epoch (no finished run prunes)"]

def test_window_lines_name_the_architecture_whose_pruned_runs_all_failed():
    """A label shared by two architectures: one architecture's finished runs hid the other's failed setting."""
    from gstlab.analysis.report import _window_lines

    runs = pd.DataFrame({"label": ["P"] * 4, "arch": ["vgg11_bn"] * 2 + ["resnet18"] * 2, "side": ["largest"] * 4,
                         "status": ["finished"] * 2 + ["failed"] * 2, "last_pruned_epoch": [3, 3, 5, 5],
                         "window_start": [3] * 4})
    assert _window_lines(runs, ())[1:] == [
        "- **no finished run of resnet18: P: the common window may start earlier than the study's schedule**"]


def test_report_figure2_tests_memorization_at_the_common_window_best_epoch_under_label_noise(tmp_path, no_draw):
    study = make_study(tmp_path / "s", "figure2", failed=False)
    for run_dir in (study / "runs").iterdir():
        metrics = pd.read_csv(run_dir / "metrics.csv")
        summary = json.loads((run_dir / "summary.json").read_text())
        # less stable runs memorize fewer noisy labels; the baseline memorizes most
        metrics["train_acc_noisy"] = summary["mean_stability"] - 10.0 + 0.01 * metrics["epoch"]
        metrics.to_csv(run_dir / "metrics.csv", index=False)
        seal(run_dir)
    md = write_report(study)
    text = md.read_text()
    line = next(t for t in text.splitlines() if "**Memorization**" in t)
    assert "n = 12 runs" in line and "verdict: **supported**" in line
    less = [t for t in text.splitlines() if "**Less memorization" in t]
    assert len(less) == 6 and all("No Pruning reaches a higher memorization" in t for t in less)
    runs = pd.read_csv(md.parent / "runs.csv")
    best = runs["window_best_epoch"]
    assert runs["window_memorization"].to_numpy() == pytest.approx(runs["mean_stability"] - 10 + 0.01 * best)


def test_groups_without_spread_are_not_testable_rather_than_significant():
    """scipy gives t = +-inf and p = 0 for constant groups (or constant paired differences, up to rounding)."""
    from gstlab.analysis.report import ttest_verdict
    from gstlab.analysis.stats import paired_ttest, ttest

    student = ttest([81.0, 81.0], [80.5, 80.5])
    assert math.isnan(student["p"]) and math.isnan(student["cohens_d"]) and student["diff"] == 0.5
    assert ttest_verdict(student) == "not testable"
    seeds = [0, 1, 2]
    paired = paired_ttest(pd.Series([80.15, 81.35, 79.95], seeds), pd.Series([79.05, 80.25, 78.85], seeds))
    assert math.isnan(paired["p"]) and math.isnan(paired["t"]) and paired["diff"] == pytest.approx(1.1)
    assert math.isnan(ttest([1.0], [])["df"]) and math.isnan(paired_ttest(pd.Series([1.0]), pd.Series([2.0]))["df"])
    assert ttest([81.0, 81.2], [80.5, 80.5])["p"] < 1  # spread in one group is enough
