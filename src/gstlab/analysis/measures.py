"""Which measure of a run predicts its generalization: the "Generalization measures" section of every report.

Per measure available in a study's finished runs, against the generalization gap and against the best test
accuracy: Kendall τ and Pearson r with 95% CIs (``stats.correlation``), and the granulated τ Ψ of Jiang et al.
("Fantastic Generalization Measures and Where to Find Them", ICLR 2020): for each axis of the study's grid, the
mean of their τ (τ_a, a tie counting 0) over the groups of runs that agree on every other axis and vary on this
one (seeds are replicates inside a group), then the mean over the axes. Rows are sorted by |τ| and give their
n. Plus the class-detail figure: per-class recall before and after the least stable events.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gstlab.analysis import figures as F
from gstlab.analysis.results import last_probes, load_event_classes, load_flatness
from gstlab.analysis.stats import correlation
from gstlab.analysis.text import interval, number, pvalue
from gstlab.config import OPTIONAL_MEASURES

# (column, name); the run's summary.json, else its last probe row (curvature.csv, else gst flatness's flatness.csv)
MEASURES = (
    ("mean_stability", "mean stability (%)"), ("mean_flips", "mean prediction flips (%)"),
    ("worst_class_drop", "worst per-class recall drop (points)"), ("recall_distortion", "recall distortion"),
    ("eig_sum", "Σ top-k Hessian eigenvalues"), ("hutchinson_trace", "Hessian trace (Hutchinson)"),
    ("grad_moment_trace", "gradient second-moment trace"), ("prunability", "prunability (kept fraction)"),
    ("distance_init", "distance from initialization"), ("pac_bayes_flatness", "PAC-Bayes flatness 1/σ²"),
    ("pac_bayes_mag_flatness", "magnitude-aware PAC-Bayes flatness 1/σ²"),
    ("sharpness", "adaptive worst-case sharpness"), ("memorization", "memorization (%)"),
)
PROBE_MEASURES = ("eig_sum", "hutchinson_trace", "grad_moment_trace", "prunability", "distance_init",
                  "pac_bayes_flatness", "pac_bayes_mag_flatness", "sharpness")
TARGETS = (("generalization_gap", "generalization gap"), ("best_test_acc", "best test accuracy"))
AXES = ("arch", "criterion", "side", "period", "iterative_rate", "intervention", "batches", "scratch")
MIN_RUNS = 3  # a measure needs this many runs with a value to be ranked
PROBE_SETTINGS = (  # (measurement, the probe row's columns that set it)
    ("Hessian", ("method", "k", "samples")),
    *((name, OPTIONAL_MEASURES[switch][1])
      for switch, name in (("prunability", "prunability"), ("pac_bayes", "PAC-Bayes"), ("sharpness", "sharpness"))),
)
CLASS_PANELS = 6  # events in the class-detail figure


def last_measures(probes: pd.DataFrame) -> pd.DataFrame:
    """run_id -> the probe measures of its last row (``results.last_probes``)."""
    cols = [c for c in PROBE_MEASURES if c in probes]
    if not len(probes) or not cols:
        return pd.DataFrame(columns=["run_id"])
    return last_probes(probes)[["run_id", *cols]]


def probe_notes(last: pd.DataFrame) -> list[str]:
    """Notes on the probe rows ``last`` (one per run): solvers stopped at their step cap, rows made before
    convergence was recorded, and probes of different settings (their values are different quantities)."""
    if not len(last):
        return []
    notes = []
    if "converged" in last:
        state = last["converged"].map(lambda v: str(v).strip().lower())
        stopped, unknown = last[state == "false"], int((~state.isin(["true", "false"])).sum())
        if len(stopped):
            worst = pd.to_numeric(stopped.get("max_rel_residual"), errors="coerce").max()
            residual = f", largest relative Ritz residual {worst:.2g}" if pd.notna(worst) else ""
            notes.append(f"Flatness: {len(stopped)} of {len(last)} runs' last probes stopped at the eigensolver's "
                         f"step cap before converging{residual}; their smaller eigenvalues (and Σ top-k) are "
                         "underestimates (probes.max_iter, or `gst flatness --max-iter`, raises the cap).")
        if unknown:
            notes.append(f"Flatness: {unknown} of {len(last)} runs' last probes do not record whether the "
                         "eigensolver converged (made before gstlab recorded it).")
    for col, name in (("pac_bayes_flatness", "PAC-Bayes"), ("pac_bayes_mag_flatness", "magnitude-aware PAC-Bayes")):
        sharpest = int(np.isposinf(pd.to_numeric(last[col], errors="coerce")).sum()) if col in last else 0
        if sharpest:
            notes.append(f"{name} flatness: {sharpest} of {len(last)} runs have σ = 0 (even the smallest noise "
                         "tried costs more than the allowed drop: flatness ∞, the sharpest runs) and are left out "
                         "of its correlations.")
    sharpness = pd.to_numeric(last["sharpness"], errors="coerce") if "sharpness" in last else pd.Series(dtype=float)
    unbounded = int(np.isposinf(sharpness).sum())
    if unbounded:
        notes.append(f"Sharpness: {unbounded} of {len(last)} runs have sharpness ∞ (a perturbed loss within the "
                     "radius was not finite: the sharpest runs) and are left out of its correlations.")
    measured = last["sharpness_rho"].notna() if "sharpness_rho" in last else pd.Series(False, index=last.index)
    undefined = int((measured & sharpness.reindex(last.index).isna()).sum())
    if undefined:
        notes.append(f"Sharpness: {undefined} of {len(last)} runs measured it without a value (their training "
                     "loss at w is not finite) and are left out of its correlations.")
    return notes + [note for group in PROBE_SETTINGS if (note := _settings_note(last, *group))]


def _settings_note(last: pd.DataFrame, name: str, columns: tuple[str, ...]) -> str:
    """A note when the runs that measured ``name`` did so with different settings (``columns``); runs that did not
    measure it (older files, the option off) are not a different setting."""
    keys = [c for c in columns if c in last]
    measured = last[last[keys].notna().any(axis=1)] if keys else last.iloc[:0]
    kinds = measured[keys].astype(object).fillna("?").astype(str).value_counts()
    if len(kinds) < 2:
        return ""
    listed = "; ".join(f"{', '.join(f'{k} {v}' for k, v in zip(keys, combo))}: {n} runs" for combo, n in kinds.items())
    return (f"Probes: the runs' last {name} probes were made with different settings ({listed}); their values are "
            "different quantities and are compared as they are.")


def with_measures(runs: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every measure column (numeric, NaN where a run has none)."""
    last = last_measures(probes)
    out = runs.drop(columns=[c for c in last.columns if c != "run_id" and c in runs]).merge(last, on="run_id",
                                                                                             how="left")
    for col, _ in (*MEASURES, *TARGETS):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else math.nan
    return out


def study_axes(runs: pd.DataFrame, grid: dict | list | None = ()) -> list[str]:
    """The grid axes that vary over ``runs``: the settings' own (index.csv's side, rate, ...) and the grid's.
    Columns that split the runs alike (``period`` and ``iterative_rate``, a gridded ``pruning.period`` beside
    index.csv's ``period``) are one axis, named ``a = b``: as two, each fixed the other, so neither varied within
    a group and both dropped out of Ψ."""
    return merged_axes(runs, [*AXES, *(k for k in (grid or ()) if k not in AXES)])


def merged_axes(runs: pd.DataFrame, columns: list[str]) -> list[str]:
    """The ``columns`` (or axes ``a = b``, split into theirs) that vary over ``runs``, those that split the runs
    alike merged into one axis ``a = b``."""
    columns = [c for axis in columns for c in axis.split(" = ")]
    columns = [c for c in dict.fromkeys(columns) if c in runs and _as_keys(runs[[c]])[c].nunique() > 1]
    merged: dict[str, list[str]] = {}  # first column -> the columns splitting the runs as it does
    for column in columns:
        first = next((f for f in merged if _splits_alike(runs, f, column)), column)
        merged.setdefault(first, []).append(column)
    return [" = ".join(group) for group in merged.values()]


def _splits_alike(runs: pd.DataFrame, a: str, b: str) -> bool:
    """Each value of ``a`` goes with one value of ``b`` and back."""
    keys = _as_keys(runs[[a, b]])
    return keys.groupby(a)[b].nunique().max() == 1 and keys.groupby(b)[a].nunique().max() == 1


def _as_keys(columns: pd.DataFrame) -> pd.DataFrame:
    """Grid values as strings, a missing one ('' in index.csv: an unpruned run's side or rate) as '' (pandas 3's
    astype(str) keeps NaN, which nunique and groupby leave out)."""
    return columns.astype(object).where(columns.notna(), "").astype(str)


def _axis_keys(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One key column per axis (an axis ``a = b`` keyed by its first column)."""
    return pd.DataFrame({axis: _as_keys(runs[[axis.split(" = ")[0]]]).iloc[:, 0] for axis in axes},
                        index=runs.index)


def tau_a(x, y) -> float:
    """Jiang et al.'s τ (their eq. 3): the mean over all pairs of sign(Δx)·sign(Δy), a tied pair counting 0;
    NaN with fewer than 2 finite pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return math.nan
    i, j = np.triu_indices(x.size, 1)
    return float(np.mean(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])))


def axis_groups(runs: pd.DataFrame, x: str, y: str, axes: list[str]) -> dict[str, list[pd.Index]]:
    """Per axis, the groups of runs (their index) equal on every other axis in which the axis varies, among the
    runs with both an ``x`` and a ``y`` value."""
    keys = _axis_keys(runs[_both(runs, x, y)], axes)
    out = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups = [g.index for _, g in keys.groupby(others, sort=False)] if others else [keys.index]
        out[axis] = [idx for idx in groups if keys.loc[idx, axis].nunique() > 1]
    return out


def _both(runs: pd.DataFrame, x: str, y: str) -> pd.Series:
    """The runs with a finite ``x`` and ``y`` (the ones a τ can use)."""
    return pd.Series(np.isfinite(pd.to_numeric(runs[x], errors="coerce").to_numpy(dtype=float))
                     & np.isfinite(pd.to_numeric(runs[y], errors="coerce").to_numpy(dtype=float)), index=runs.index)


def granulated_tau(runs: pd.DataFrame, x: str, y: str, axes: list[str]) -> tuple[float, dict[str, float]]:
    """(Ψ, axis -> ψ_axis) of Jiang et al. (ICLR 2020, eq. 4): ψ_axis is the mean of τ_a(x, y) (``tau_a``) over
    the axis's ``axis_groups``; Ψ is the mean of the ψ defined (an axis that never varies with the others fixed
    has none)."""
    return _psi_of(runs, x, y, axis_groups(runs, x, y, axes))


def _psi_of(runs: pd.DataFrame, x: str, y: str, groups: dict[str, list[pd.Index]]) -> tuple[float, dict[str, float]]:
    """(Ψ, axis -> ψ_axis) from each axis's ``axis_groups``."""
    per_axis = {axis: float(np.mean([tau_a(runs.loc[idx, x], runs.loc[idx, y]) for idx in of_axis]))
                for axis, of_axis in groups.items() if of_axis}
    return (float(np.mean(list(per_axis.values()))) if per_axis else math.nan), per_axis


def measure_rows(runs: pd.DataFrame, axes: list[str], target: str) -> list[dict]:
    """One row per measure with at least MIN_RUNS values: correlation with ``target`` and granulated τ over the
    runs that have both values (their axes merged anew: columns can split those runs alike and not all of them);
    sorted by |τ| (undefined last)."""
    rows = []
    for col, name in MEASURES:
        if col not in runs or runs[col].notna().sum() < MIN_RUNS or col == target:
            continue
        usable = runs[_both(runs, col, target)]
        own = merged_axes(usable, axes)
        groups = axis_groups(usable, col, target, own)
        psi, per_axis = _psi_of(usable, col, target, groups)
        rows.append({"measure": name, "column": col, **correlation(runs[col], runs[target]), "psi": psi,
                     "per_axis": per_axis, "groups": {axis: len(g) for axis, g in groups.items()},
                     "no_psi": [a for a in own if a not in per_axis]})
    return sorted(rows, key=lambda r: -abs(r["kendall_tau"]) if math.isfinite(r["kendall_tau"]) else math.inf)


def _with_ci(value, low, high) -> str:
    """The value, with its CI in brackets where it has one."""
    ci = f" {interval(low, high, 3)}" if math.isfinite(low) and math.isfinite(high) else ""
    return number(value, 3) + ci


def _psi(row: dict) -> str:
    none = f"no ψ for {', '.join(row['no_psi'])}: never varying while the others are fixed" if row["no_psi"] else ""
    if not math.isfinite(row["psi"]):
        return f"n/a ({none})" if none else "n/a"
    parts = [_one_psi(a, t, row["groups"][a]) for a, t in row["per_axis"].items()] + ([none] if none else [])
    return f"{row['psi']:.3f} ({'; '.join(parts)})"


def _one_psi(axis: str, psi: float, groups: int) -> str:
    return f"{axis} {psi:.2f}, {groups} group{'s' if groups != 1 else ''}"


def section(runs: pd.DataFrame, probes: pd.DataFrame, grid=()) -> str:
    """The markdown of the "Generalization measures" section for a study's finished ``runs``."""
    runs = with_measures(runs, probes)
    axes = study_axes(runs, grid)
    lines = ["## Generalization measures", "",
             f"Which measure of a run predicts how it generalizes, over this study's {len(runs)} finished runs: "
             "Kendall τ and Pearson r with 95% CIs (τ: paired bootstrap; r: Fisher z), and the granulated τ Ψ of "
             "Jiang et al. (ICLR 2020): per grid axis, the mean of their τ (τ_a: ties count 0) over the groups of "
             "runs that agree on every other axis and vary on this one (ψ per axis in brackets), then the mean over "
             f"axes. Grid axes of this study: {', '.join(axes) or 'none vary'} (merged anew over each measure's "
             "runs, where columns can split them alike). Sorted by |τ|; n = runs with both values. Probe measures "
             "come from each run's last probe row (curvature.csv, else `gst flatness`'s flatness.csv).", ""]
    for target, name in TARGETS:
        rows = measure_rows(runs, axes, target)
        lines += [f"### vs {name}", ""]
        if not rows:
            lines += [f"No measure has values in {MIN_RUNS} or more runs.", ""]
            continue
        lines += ["| measure | n | Kendall τ [95% CI] | p | Pearson r [95% CI] | granulated τ Ψ (ψ per axis) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['measure']} | {r['n']} | "
                  f"{_with_ci(r['kendall_tau'], r['kendall_ci_low'], r['kendall_ci_high'])} | "
                  f"{pvalue(r['kendall_p'])} | {_with_ci(r['pearson_r'], r['pearson_ci_low'], r['pearson_ci_high'])}"
                  f" | {_psi(r)} |" for r in rows]
        lines.append("")
    notes = probe_notes(last_probes(probes)) if len(probes) else []
    lines += [*(f"- {n}" for n in notes), ""] if notes else []
    missing = [name for col, name in MEASURES if runs[col].notna().sum() < MIN_RUNS]
    if missing:
        lines += [f"Not available in {MIN_RUNS} or more runs: {', '.join(missing)} (probe measures need `probes` "
                  "in the runs' configs or `gst flatness RUN_DIR --prunability --pac-bayes --sharpness` on their saved "
                  "models; "
                  "memorization needs `data.label_noise`; class detail needs pruning events).", ""]
    constant = [f"{name} ({number(runs[col].dropna().iloc[0], 3)})" for col, name in MEASURES
                if runs[col].notna().sum() >= MIN_RUNS and runs[col].nunique() == 1]
    if constant:
        lines += [f"The same in every run, so Kendall τ and Pearson r are n/a (Jiang's τ counts the ties 0): "
                  f"{', '.join(constant)}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the figure


def least_stable(events: pd.DataFrame, classes: pd.DataFrame, runs: pd.DataFrame,
                 k: int = CLASS_PANELS) -> list[tuple[dict, pd.DataFrame]]:
    """The ``k`` least stable pruning epochs (largest instability) that have class detail, at most one per run
    (its least stable): (event, its class rows)."""
    if not len(events) or not len(classes):
        return []
    ev = events[pd.to_numeric(events["units_removed"], errors="coerce") > 0].copy()
    scratch = dict(zip(runs["run_id"], runs["scratch"])) if "scratch" in runs else {}
    ev = ev[~((ev["epoch"] == 0) & ev["run_id"].map(scratch).fillna(False).astype(bool))]
    before = pd.to_numeric(ev["acc_before"])
    ev["instability"] = (before - pd.to_numeric(ev["acc_after"])) / before
    ev = ev.sort_values("instability", ascending=False, kind="stable").drop_duplicates("run_id")
    out = []
    for _, e in ev[ev["run_id"].isin(classes["run_id"])].iterrows():
        rows = classes[(classes["run_id"] == e["run_id"]) & (classes["epoch"] == e["epoch"])]
        rows = rows[rows["layer"] == rows["layer"].iloc[0]] if len(rows) else rows
        if len(rows):
            out.append((e.to_dict(), rows))
        if len(out) == k:
            break
    return out


def class_figure(panels: list[tuple[dict, pd.DataFrame]], stem, title: str):
    """Per-class test recall before and after each of the least stable events (one panel each)."""
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = F.subplots(nrows, cols, figsize=(4.6 * cols, 3.2 * nrows + 0.4), squeeze=False)
    for ax, (event, rows) in zip(axes.flat, panels):
        k = np.arange(len(rows))
        ax.bar(k - 0.2, rows["recall_before"], 0.4, label="before", color="#9ecae1")
        ax.bar(k + 0.2, rows["recall_after"], 0.4, label="after", color="#08519c")
        flips = float((rows["count"] * rows["flips"]).sum() / rows["count"].sum())
        ax.set_title(f"{event['label']} seed {event['seed']}, epoch {event['epoch']}\n"
                     f"acc {float(event['acc_before']):.1f} → {float(event['acc_after']):.1f}%, "
                     f"flips {flips:.1f}%", fontsize=8)
        ax.set_xticks(k, [str(c) for c in rows["class"]], fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_xlabel("class", fontsize=8)
        ax.set_ylabel("test recall (%)", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return F.save(fig, stem)


def load_tables(study_dir, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The study tables this section reads beyond the report's own: class detail and ``gst flatness`` rows."""
    return {"events_classes": load_event_classes(study_dir, runs), "flatness": load_flatness(study_dir, runs)}


def add_to_report(rep, events: pd.DataFrame, classes: pd.DataFrame, probes: pd.DataFrame, grid=()) -> None:
    """Append the section and the class-detail figure to a ``report.Report``."""
    rep.sections.append(section(rep.runs, probes, grid))
    panels = least_stable(events, classes, rep.runs)
    if panels:
        title = f"Per-class test recall before and after the {len(panels)} least stable events (one per run)"
        rep.add_figure("Class detail of the least stable events", class_figure(panels, rep.out / "class_detail", title))
