"""Load a study directory (docs/studies.md) into pandas tables.

- :func:`load_study`: one row per run, ``index.csv`` joined with the run's ``summary.json`` (plus
  ``params_remaining_pct`` and ``scratch``);
- :func:`load_epochs`, :func:`load_events`, :func:`load_curvature`, :func:`load_eps`, :func:`load_event_classes`,
  :func:`load_flatness`: long tables, the rows of every run's ``metrics.csv`` / ``events.csv`` /
  ``curvature.csv`` / ``eps_sweep.csv`` / ``events_classes.csv`` / ``flatness.csv`` with ``run_id``,
  ``setting``, ``label`` and ``seed`` prepended. Missing files are skipped. A file column that clashes with
  these is renamed (curvature.csv's probe ``seed`` becomes ``probe_seed``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gstlab import recovery, store
from gstlab.config import OPTIONAL_MEASURES
from gstlab.errors import one_line, warn
from gstlab.probes import CURVATURE_COLUMNS, EPS_COLUMNS
from gstlab.store import EVENT_COLUMNS, METRIC_COLUMNS

ID_COLUMNS = ("run_id", "setting", "label", "seed")
INDEX_REQUIRED = ("run_id", "seed", "status")  # every row of index.csv has them
SUMMARY_COLUMNS = (
    "mean_stability", "best_test_acc", "best_epoch", "final_test_acc", "generalization_gap", "n_events",
    "n_prune_epochs", "last_pruned_epoch", "epochs_done", "params_total", "params_remaining", "params_zero",
    "peak_test_acc", "peak_epoch", "memorization",
)


def _run_dir(study_dir: Path, row: pd.Series) -> Path:
    value = row.get("run_dir")
    if isinstance(value, str) and value.strip():
        path = Path(value) if Path(value).is_absolute() else study_dir / value
        local = study_dir / "runs" / str(row["run_id"])
        return local if not path.exists() and local.exists() else path  # a study moved with its runs
    return study_dir / "runs" / str(row["run_id"])


LEFT_OUT = ("damaged", "outside")  # statuses of runs whose files cannot be used (verified_summary)


def verified_summary(run_dir: Path, run_id: str) -> tuple[dict | None, tuple[str, str] | None]:
    """(summary, None) for a final run whose files match its manifest's checksums; (None, None) for a run that
    has not finished; (None, (status, reason)) for a run left out: ``outside`` when ``run_dir`` is not a run
    directory of a study (``.../runs/<run_id>``, e.g. /etc), ``damaged`` when a file does not match or the
    manifest that would verify them is missing."""
    if run_dir.name != run_id or run_dir.parent.name != "runs":
        return None, ("outside", f"index.csv names run_dir {run_dir}, which is not .../runs/{run_id}")
    summary, problem = recovery.verify_finished(run_dir, strict=True, run_id=run_id)
    return summary, None if problem is None else ("damaged", problem)


def _scratch(row: pd.Series, run_dir: Path) -> bool:
    """Scratch pruning: from index.csv if it says, else the run's config.yaml, else the label."""
    if "scratch" in row and pd.notna(row["scratch"]):
        return str(row["scratch"]).strip().lower() in ("1", "true", "yes")
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        try:
            pruning = (yaml.safe_load(cfg.read_text()) or {}).get("pruning") or {}
            return bool(pruning.get("scratch", False))
        except (yaml.YAMLError, AttributeError, OSError, UnicodeDecodeError):
            pass
    return "scratch" in str(row.get("label", "")).lower()


def index_text(study_dir: Path) -> tuple[str, bool]:
    """The text of ``index.csv`` and whether ``index.csv.sha256`` vouched for it (store.DamagedFileError when it
    does not match, or the file is not UTF-8)."""
    return store.read_checked_text(study_dir / "index.csv", f"`gst sweep` on the study ({study_dir}/study.yaml)")


def read_index(study_dir: Path) -> pd.DataFrame:
    """``index.csv``, verified against ``index.csv.sha256`` (store.DamagedFileError when it does not match; a
    warning when an index from before checksums has none and is used: one that is refused gets only the
    error)."""
    path = study_dir / "index.csv"
    text, checked = index_text(study_dir)
    try:
        index = pd.read_csv(io.StringIO(text), dtype={"run_id": str, "setting": str, "label": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:  # an index from before checksums
        raise store.DamagedFileError(f"{path}: not a CSV table ({one_line(err)}); `gst sweep` on the study "
                                     f"rewrites it (finished runs are not re-run)") from None
    _check_rows(index, path)
    if not checked:
        warn(f"{path} has no checksum file (written before gstlab checksummed study indexes); used as it is. "
             f"`gst sweep` on the study writes one")
    return index


def _check_rows(index: pd.DataFrame, path: Path) -> None:
    """A row cut short (a truncated index from before checksums) has no status or part of one: refused, not
    read as a run of that status."""
    from gstlab.study import RUN_STATUSES  # noqa: PLC0415

    missing = [c for c in INDEX_REQUIRED if c not in index]
    where = f"no column {missing[0]}" if missing else None
    for i, row in index[list(INDEX_REQUIRED)].iterrows() if not missing else ():
        empty = [c for c in INDEX_REQUIRED if pd.isna(row[c])]
        if empty or row["status"] not in RUN_STATUSES:
            where = f"line {i + 2} has " + (f"no {', '.join(empty)}" if empty else f"status {row['status']!r}")
            break
    if where:
        raise store.DamagedFileError(f"{path}: {where} (truncated or damaged); `gst sweep` on the study rewrites "
                                     f"it (finished runs are not re-run)")


def load_study(study_dir: str | Path) -> pd.DataFrame:
    """One row per run of ``index.csv``, joined with its ``summary.json`` (NaN where there is none)."""
    study_dir = Path(study_dir)
    index = read_index(study_dir)
    rows = []
    for _, row in index.iterrows():
        run_dir = _run_dir(study_dir, row)
        rec = row.to_dict()
        rec["run_dir"] = str(run_dir)
        summary, problem = verified_summary(run_dir, str(row["run_id"]))
        if problem is None and summary is None and str(row.get("status")) in recovery.FINAL:
            problem = ("damaged", f"index.csv says {row['status']} but {run_dir / 'summary.json'} is missing (the "
                                  f"run directory was deleted or moved)")
        if problem is not None:
            rec.update(status=problem[0], failure=problem[1])
        elif summary is not None:
            summary.pop("run_id", None)
            rec.update(summary)
        rec["scratch"] = _scratch(row, run_dir) if problem is None else False
        rows.append(rec)
    df = pd.DataFrame(rows, columns=list(dict.fromkeys([*index.columns, *SUMMARY_COLUMNS,
                                                         *(k for r in rows for k in r)])))
    for col in SUMMARY_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    with np.errstate(divide="ignore", invalid="ignore"):
        df["params_remaining_pct"] = 100.0 * df["params_remaining"] / df["params_total"]
    df["status"] = df["status"].astype(str)
    return df


def _long(study_dir: str | Path, filename: str, columns: tuple[str, ...], runs: pd.DataFrame | None) -> pd.DataFrame:
    runs = load_study(study_dir) if runs is None else runs
    parts = []
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / filename
        if run.get("status") in LEFT_OUT:  # unverified files are never read
            continue
        if not path.exists() or path.stat().st_size == 0:
            continue
        table = _table(path)
        if table is None:
            continue
        table = table.rename(columns={c: f"probe_{c}" if c == "seed" else f"file_{c}" for c in ID_COLUMNS
                                      if c in table})
        for i, col in enumerate(ID_COLUMNS):
            table.insert(i, col, run[col])
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=[*ID_COLUMNS, *columns])
    return pd.concat(parts, ignore_index=True)


def _table(path: Path) -> pd.DataFrame | None:
    """A run's CSV table. The manifest's checksums vouch for the files a run writes (its summary is verified
    before they are read); a table added later with a checksum file (``gst flatness``) is checked against it,
    and one that does not match is left out with a warning (None)."""
    if store.checksum_path(path).exists():
        try:
            text, _ = store.read_checked_text(path, "`gst flatness` on the run")
        except store.DamagedFileError as err:
            warn(f"{err}; its rows are left out")
            return None
        return pd.read_csv(io.StringIO(text))
    return pd.read_csv(path)


def machine_lines(runs: pd.DataFrame) -> list[str]:
    """Where the finished ``runs`` were computed, from their manifests: device, vector ISA and the kernels used
    (portable or not), threads, torch, and gstlab's git commit, with run counts; numbers reproduce bit for bit only
    on the same kind of machine (docs/decisions.md, "Where results reproduce")."""
    from gstlab.environment import machine_text, recorded_stretches  # noqa: PLC0415

    kinds: dict[str, int] = {}
    for run_dir in runs.get("run_dir", pd.Series(dtype=str)):
        m = store.read_json_or_none(Path(run_dir) / "manifest.json") or {}
        key = machine_text(m) + "".join(f" (resumed there; epochs {s['epochs'][0]}-{s['epochs'][1]} were computed on "
                                        f"{machine_text(s)})" for s in recorded_stretches(m))
        kinds[key] = kinds.get(key, 0) + 1
    return [f"computed on: {key}: {n} run{'s' if n > 1 else ''}" for key, n in kinds.items()]


def load_epochs(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``metrics.csv`` (``runs``: a :func:`load_study` table, to avoid reading it again)."""
    return _long(study_dir, "metrics.csv", METRIC_COLUMNS, runs)


def load_events(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``events.csv``."""
    return _long(study_dir, "events.csv", EVENT_COLUMNS, runs)


def load_curvature(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``curvature.csv`` (flatness probes)."""
    columns = tuple("probe_seed" if c == "seed" else c for c in CURVATURE_COLUMNS)
    return with_later_settings(_long(study_dir, "curvature.csv", columns, runs))


# Probe settings added after their measurement: the value rows made before the setting existed were measured with
LATER_SETTINGS = {"sharpness_restarts": 1}


def with_later_settings(probes: pd.DataFrame) -> pd.DataFrame:
    """``probes`` with each later setting filled in where a row measured its group (``OPTIONAL_PROBE_GROUPS``)
    before the setting was recorded, so that older rows are not read as another setting."""
    for col, then in LATER_SETTINGS.items():
        key = next(key for key, group in OPTIONAL_PROBE_GROUPS if col in group)
        if key in probes:
            recorded = probes[col] if col in probes else pd.Series(np.nan, index=probes.index)
            probes[col] = recorded.where(recorded.notna() | probes[key].isna(), then)
    return probes


# A probe row's optional measures (column that is set exactly when the group was measured, the group's columns)
OPTIONAL_PROBE_GROUPS = tuple((settings[0], tuple(c for c in CURVATURE_COLUMNS if c.startswith(switch)))
                              for switch, (_, settings) in OPTIONAL_MEASURES.items())


def last_probes(curvature: pd.DataFrame) -> pd.DataFrame:
    """Each run's last flatness probe: the row with the highest epoch per run_id (a stable sort: of two rows at
    one epoch, the later in the table, e.g. flatness.csv's after curvature.csv's). An optional measure group
    (prunability, PAC-Bayes, sharpness) the last row did not measure comes from the latest row at that same epoch
    that did, so a later ``gst flatness`` without ``--pac-bayes`` does not hide an earlier probe's PAC-Bayes
    values."""
    ordered = curvature.sort_values(["run_id", "epoch"], kind="stable")
    latest = ordered.groupby("run_id")["epoch"].transform("max")
    final = ordered[(ordered["epoch"] == latest) | latest.isna()]  # a table without epochs: its last row
    last = final.groupby("run_id").tail(1).copy()
    for key, group in OPTIONAL_PROBE_GROUPS:
        if key not in final:
            continue
        measured = final[final[key].notna()].groupby("run_id").tail(1).set_index("run_id")
        fill = last[key].isna() & last["run_id"].isin(measured.index)
        for col in (c for c in group if c in final and fill.any()):
            last.loc[fill, col] = last.loc[fill, "run_id"].map(measured[col])
    return last


def load_event_classes(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``events_classes.csv`` (per-class recall before/after each event)."""
    from gstlab.class_detail import CLASS_COLUMNS  # noqa: PLC0415

    return _long(study_dir, "events_classes.csv", CLASS_COLUMNS, runs)


def load_flatness(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``flatness.csv`` (``gst flatness`` on its saved models)."""
    columns = tuple("probe_seed" if c == "seed" else c for c in CURVATURE_COLUMNS)
    return with_later_settings(_long(study_dir, recovery.FLATNESS_TABLE, columns, runs))


def load_eps(study_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of every run's ``eps_sweep.csv`` (loss along Hessian eigenvectors)."""
    return _long(study_dir, "eps_sweep.csv", EPS_COLUMNS, runs)


def parse_eigenvalues(value) -> np.ndarray:
    """The ``eigenvalues`` cell of curvature.csv (space-separated floats; commas/brackets tolerated)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value, dtype=float)
    if not isinstance(value, str):
        return np.array([])
    text = value.replace(",", " ").replace("[", " ").replace("]", " ")
    return np.array([float(v) for v in text.split()], dtype=float)
