"""Damaged or inconsistent run directories: verify a finished run's files, pick a loadable checkpoint, and bring
the directory to its final state (docs/reliability.md).

A finished run's ``manifest.json`` lists a SHA-256 of every result file (``files``). A run that finished before
its manifest was final (killed in between, or written by an older gstlab) is checked by structure instead:
``summary.json`` is a JSON object, ``metrics.csv`` has one row per epoch done, ``events.csv`` parses, and
``model_final.pt`` loads. Every repair is recorded in the manifest's ``recovered`` list.
"""

from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path

from gstlab import store
from gstlab.errors import warn

FINAL = ("finished", "failed")
UNCHECKED = ("manifest.json", "config.yaml", store.CHECKPOINT, store.PREVIOUS_CHECKPOINT)  # config: run identity
# tables `gst flatness` appends to after a run ended: each has a checksum file of its own (NAME.sha256) and may be
# set aside (NAME.damaged-N); in the manifest, the next row would make the run read damaged
FLATNESS_TABLE, FLATNESS_EPS_TABLE = "flatness.csv", "flatness_eps.csv"
ADDED_LATER = (FLATNESS_TABLE, FLATNESS_EPS_TABLE)


def unkept_epochs(kept: tuple[int, ...], run_dir: Path, upto: int) -> list[int]:
    """Epochs of ``train.keep_checkpoints`` before ``upto`` whose model_epochN.pt ``run_dir`` lacks: the field is
    outside the run id, so an ended run (or a resumed one, before its resume epoch) will not write them."""
    return [e for e in kept if e < upto and not (run_dir / f"model_epoch{e}.pt").is_file()]


def note(file: str, problem: str, action: str) -> dict:
    return {"file": file, "problem": problem, "action": action, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ------------------------------------------------------------------------------------------- finished runs


def checksums(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every result file of ``run_dir`` (not the manifest, config, checkpoints or what ``gst
    flatness`` adds later)."""
    return {p.name: store.file_digest(p) for p in sorted(run_dir.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name not in UNCHECKED and not _added_later(p.name)}


def _added_later(name: str) -> bool:
    """``name`` is a table of ``gst flatness``, its checksum file or one of them set aside."""
    return re.sub(r"\.damaged-\d+$", "", name).removesuffix(".sha256") in ADDED_LATER


def verify_finished(run_dir: Path, strict: bool = False,
                    run_id: str | None = None) -> tuple[dict | None, str | None]:
    """(summary, None) for a finished or failed run whose files are intact; (None, problem) when one is
    damaged; (None, None) when the run has not finished. ``strict``: a run without checksums in its manifest
    is damaged too (a reader cannot check it by structure alone; ``gst run`` rebuilds the manifest).
    ``run_id``: the run the directory must hold (a directory copied or moved under another run's name is
    damaged for it)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None, None
    summary = store.read_json_or_none(path)
    if summary is None or "status" not in summary:
        return None, "summary.json is damaged (not a JSON object with a status)"
    if summary["status"] not in FINAL:
        return None, None
    manifest = store.read_json_or_none(run_dir / "manifest.json") or {}
    files = manifest.get("files")
    if strict and not isinstance(files, dict):
        return None, "manifest.json is missing or damaged, so its files cannot be verified"
    problem = _check_sums(run_dir, files) if isinstance(files, dict) else _check_structure(run_dir, summary)
    problem = problem or (_other_run(run_dir, run_id) if run_id is not None else None)
    return (None, problem) if problem else (summary, None)


def _check_sums(run_dir: Path, files: dict) -> str | None:
    """The first listed file missing or not matching; what ``gst flatness`` adds is checked by its own checksum
    file (a manifest settled before it was left out may list it)."""
    for name, digest in files.items():
        if _added_later(name):
            continue
        path = run_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if store.file_digest(path) != digest:
            return f"{name} is damaged (checksum mismatch)"
    return None


def _check_structure(run_dir: Path, summary: dict) -> str | None:
    rows = _csv_rows(run_dir / "metrics.csv", *_metric_headers())
    if rows is None or rows != summary.get("epochs_done", rows):
        return "metrics.csv is damaged (missing, unreadable or not one row per epoch done)"
    if _csv_rows(run_dir / "events.csv", store.EVENT_COLUMNS, *store.LEGACY_EVENT_COLUMNS) is None:
        return "events.csv is damaged (missing or unreadable)"
    model = run_dir / "model_final.pt"
    if rows and not _loads(model):
        return "model_final.pt is damaged (missing or not loadable)"
    if not _agrees(run_dir, summary):
        return "metrics.csv or events.csv is damaged (summary.json does not follow from them)"
    return None


def _agrees(run_dir: Path, summary: dict) -> bool:
    """True when the summary's statistics follow from metrics.csv and events.csv (scratch or not): without
    checksums this finds an edited accuracy, though not an edit to a column the summary does not use."""
    from gstlab.analysis.summary import summarize  # noqa: PLC0415

    tables = []
    for name in ("metrics.csv", "events.csv"):
        with open(run_dir / name, newline="", encoding="utf-8") as f:
            tables.append(list(csv.DictReader(f)))
    try:
        options = [summarize(*tables, scratch) for scratch in (False, True)]
    except (ValueError, TypeError, KeyError, ZeroDivisionError):
        return False
    return any(all(_same(summary.get(k), v) for k, v in option.items()) for option in options)


def _same(recorded, computed) -> bool:
    """Equal, with NaN recorded as null (strict JSON)."""
    if isinstance(computed, float) and math.isnan(computed):
        return recorded is None or (isinstance(recorded, float) and math.isnan(recorded))
    return recorded == computed


def _metric_headers() -> tuple[tuple[str, ...], ...]:
    """The headers a run's metrics.csv may have: without and with label noise's columns."""
    from gstlab.data.label_noise import NOISE_COLUMNS  # noqa: PLC0415

    return store.metric_columns(), store.metric_columns(NOISE_COLUMNS)


def _csv_rows(path: Path, *headers: tuple[str, ...]) -> int | None:
    """Data rows of a CSV whose header is one of ``headers`` and whose every row has that many fields."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(next(reader, ()))
            if header not in headers:
                return None
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None if any(len(r) != len(header) for r in rows) else len(rows)


def _loads(path: Path) -> bool:
    try:
        store.load_checkpoint(path)
    except Exception:  # noqa: BLE001 (a damaged file raises many types)
        return False
    return True


def discard_summary(run_dir: Path) -> None:
    """Remove a damaged finished run's summary, so it is re-run (and cannot look finished if that re-run is
    cut off)."""
    store.discard(run_dir / "summary.json")


# ------------------------------------------------------------------------------------------- final state


def settled(run_dir: Path, summary: dict) -> bool:
    """True when the manifest agrees with the summary and no checkpoint or temporary file is left."""
    manifest = store.read_json_or_none(run_dir / "manifest.json") or {}
    return (manifest.get("status") == summary["status"] and isinstance(manifest.get("files"), dict)
            and not _transient(run_dir))


def _transient(run_dir: Path) -> list[Path]:
    """Checkpoints and a killed write's temporary files; not those of ``gst flatness``'s tables (it takes no
    lock: a write of it under way would be deleted)."""
    ckpts = [run_dir / store.CHECKPOINT, run_dir / store.PREVIOUS_CHECKPOINT]
    flatness = tuple(f".{table}." for table in ADDED_LATER)
    return [p for p in ckpts if p.exists()] + [p for p in store.leftovers(run_dir) if not p.name.startswith(flatness)]


def remove_transient(run_dir: Path) -> None:
    """Checkpoints and temporary files: a final run keeps neither."""
    for path in _transient(run_dir):
        path.unlink(missing_ok=True)


def settle(run_dir: Path, summary: dict, notes: list[dict]) -> None:
    """Bring a verified final run to its final state: the manifest's status, finish time and checksums agree
    with the summary; checkpoints and temporary files are gone."""
    manifest = store.read_json_or_none(run_dir / "manifest.json")
    if manifest is None:
        manifest = {"run_id": summary.get("run_id")}
        warn(f"{run_dir}/manifest.json is damaged or missing; rebuilt it from summary.json and the result files "
             f"(checked by structure; the environment record is lost)")
        notes.append(note("manifest.json", "damaged or missing", "rebuilt from summary.json (environment lost)"))
    remove_transient(run_dir)
    manifest.update(status=summary["status"], finished=manifest.get("finished") or time.strftime(
        "%Y-%m-%dT%H:%M:%S%z"), files=checksums(run_dir))
    if notes:
        manifest["recovered"] = [*manifest.get("recovered", []), *notes]
    store.write_json(run_dir / "manifest.json", manifest)


def previous_notes(manifest: dict) -> list[dict]:
    """The repairs recorded so far in a run's ``manifest`` (its manifest.json as read)."""
    notes = manifest.get("recovered")
    return notes if isinstance(notes, list) else []


def _other_run(run_dir: Path, run_id: str) -> str | None:
    """A problem line when ``run_dir``'s files record another run than ``run_id`` (a directory copied or moved
    under another run's name), else None."""
    others = sorted(set(recorded_ids(run_dir)) - {run_id})
    return f"its files record run {others[0]}, not {run_id} (copied or moved here)" if others else None


def recorded_ids(run_dir: Path) -> list[str]:
    """Run ids that manifest.json and summary.json of ``run_dir`` record (the readable ones)."""
    ids = [(store.read_json_or_none(run_dir / name) or {}).get("run_id") for name in ("manifest.json",
                                                                                      "summary.json")]
    return [i for i in ids if isinstance(i, str)]
