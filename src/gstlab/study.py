"""Studies: a YAML of settings x grid x seeds expanded into validated runs with content-hashed ids.

Every run is checked (config, grid keys, layer names are checked when it starts) before any run starts, so a
typo in the 40th setting does not surface an hour into the study. The layout is documented in docs/studies.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gstlab import config as C
from gstlab import safeyaml, store
from gstlab.experiments.presets import SCALES

STUDY_KEYS = ("name", "figure", "scale", "seeds", "settings", "grid", "set", "override")
SETTING_KEYS = ("preset", "config", "inline", "label", "set")
ARCH_SPLIT = ("figure2", "figureB2", "figure4", "generic")  # reports that group runs per arch (report.arch_groups)
FIGURES = ("generic", "figure2", "figure3", "figure4", "figure5", "figure6", "figureB2", "figureC3", "figureD2",
           "figureE", "tableC1", "tableF1")
INDEX_COLUMNS = ("run_id", "setting", "label", "seed", "arch", "criterion", "side", "period", "iterative_rate",
                 "intervention", "batches")


@dataclass(frozen=True)
class Setting:
    key: str  # preset name, or the label of a file/inline setting
    label: str
    data: dict  # the config mapping before study overrides
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    figure: str
    scale: str
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    grid: dict[str, list] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # ``set``: before each setting's own ``set`` (a setting may change them)
    final: tuple[str, ...] = ()  # ``override`` (``gst sweep --set``): after the setting and the grid point
    base: Path = Path(".")  # the folder ``config:`` paths are relative to (the study file's)
    scale_read: bool = True  # False: the file gives ``scale:`` but no preset setting reads it


@dataclass(frozen=True)
class StudyRun:
    run_id: str
    setting: str
    label: str
    seed: int
    grid: dict[str, Any]
    cfg: C.RunConfig
    aliases: tuple[str, ...] = ()  # other settings that resolve to this same run (e.g. at a small scale)


# ------------------------------------------------------------------------------------------------- parsing


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise C.ConfigError(f"{where}: expected a mapping of dotted.key: value")
    _check_keys(value, where)
    _refuse_seed(value, where)
    refuse_same_field(value, where)
    return tuple(_assignment(k, v) for k, v in value.items())


KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # a dotted config field (list elements by index)


def _check_keys(keys: dict, where: str) -> None:
    for key in keys:
        if not KEY.fullmatch(key):
            raise C.ConfigError(f"{where}: key {key!r} is not a config field; allowed: a dotted field name such as "
                                f"optim.lr or pruning.layers.0.fraction")


def _overlap(a: str, b: str) -> bool:
    """Two dotted keys address the same field: equal, or one is a section (or list) holding the other."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _fields(key: str, value: Any) -> list[str]:
    """The fields a ``key: value`` sets: a mapping given for a section sets only the keys it names."""
    if isinstance(value, dict) and value:
        return [f for k, v in value.items() for f in _fields(f"{key}.{k}", v)]
    return [key]


def refuse_same_field(value: dict, where: str) -> None:
    """Two keys that set one field (``optim.lr: 0.5`` and ``optim: {lr: 0.1}``): one would silently win."""
    shared = _shared_field({key: _fields(key, item) for key, item in value.items()})
    if shared is not None:
        other, key, f = shared
        raise C.ConfigError(f"{where}: keys {other!r} and {key!r} both set {f}; allowed: each field once")


def _shared_field(fields_of: dict[str, list[str]]) -> tuple[str, str, str] | None:
    """(an earlier key, a key, the field both address) for the first two keys of ``fields_of`` (key -> the
    fields it sets) that address one field; None if none do."""
    seen: list[tuple[str, str]] = []  # (field, the key that sets it)
    for key, fields in fields_of.items():
        for f in fields:
            other = next((k for g, k in seen if _overlap(f, g)), None)
            if other is not None:
                return other, key, f
        seen += [(f, key) for f in fields]
    return None


def first_repeat(values: list) -> Any:
    """The first value listed twice, else None; linear (a set of canonical JSON forms: grid values may be lists
    or mappings)."""
    seen: set[str] = set()
    for v in values:
        key = json.dumps(v, sort_keys=True)
        if key in seen:
            return v
        seen.add(key)
    return None


def _refuse_seed(keys: dict, where: str) -> None:
    """Each run's seed is one of the study's ``seeds``: a seed set or gridded was overwritten by it (silently)."""
    key = next((k for k in keys if str(k).split(".")[0].strip() == "seed"), None)  # also seed.x: replaced too
    if key is not None:
        raise C.ConfigError(f"{where}.{key}: a run's seed comes from the study's seeds; allowed: seeds: n (seeds "
                            f"0..n-1) or a list of seeds")


def _assignment(key: str, value: Any) -> str:
    """``key=value`` with the value written as (flow) YAML, the form ``--set`` parses."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


MAX_SEEDS = 10_000  # seeds of a study (the paper uses up to 10 per setting)
MAX_RUNS = 100_000  # settings x grid points x seeds of a study
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=-]*")  # a study name is one path component (default --out)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEEDS:
        return tuple(range(value))
    if (isinstance(value, list) and 0 < len(value) <= MAX_SEEDS
            and all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        twice = first_repeat(value)
        if twice is not None:
            raise C.ConfigError(f"seeds: seed {twice} is listed twice (the same runs); allowed: distinct seeds")
        return tuple(value)
    n = value if isinstance(value, int) and not isinstance(value, bool) else len(value) if isinstance(value, list) \
        else 0
    if n > MAX_SEEDS:
        raise C.ConfigError(f"seeds: at most {MAX_SEEDS:,} seeds, got {n:,}")
    raise C.ConfigError(f"seeds: expected a positive int n (seeds 0..n-1) or a non-empty list of ints, got {value!r}")


def _setting(item: Any, i: int, scale: str, base: Path, grid: dict[str, list]) -> Setting:
    from gstlab.experiments.presets import PRESETS, preset_config  # noqa: PLC0415

    where = f"settings[{i}]"
    if not isinstance(item, dict) or not item:
        raise C.ConfigError(f"{where}: expected a mapping with one of preset, config, inline")
    unknown = set(item) - set(SETTING_KEYS)
    if unknown:
        raise C.ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(SETTING_KEYS)}")
    sources = [k for k in ("preset", "config", "inline") if k in item]
    if len(sources) != 1:
        raise C.ConfigError(f"{where}: give exactly one of preset, config, inline")
    for key in ("preset", "config", "label"):
        if key in item and not isinstance(item[key], str):
            raise C.ConfigError(f"{where}.{key}: expected a string, got {item[key]!r}")
    if "label" in item and not item["label"].strip():
        raise C.ConfigError(f"{where}.label: empty; allowed: a name for the setting's runs in the reports (or "
                            f"leave label out)")
    if "preset" in item and item["preset"] not in PRESETS:
        raise C.ConfigError(f"{where}.preset: unknown preset {item['preset']!r}; see `gst presets`")
    if "preset" in item:
        data = preset_config(item["preset"], scale)
        key, label = item["preset"], item.get("label", PRESETS[item["preset"]].label)
    elif "config" in item:
        data = C.load_yaml(base / item["config"])
        key = label = item.get("label", Path(item["config"]).stem)
    else:
        if not isinstance(item["inline"], dict):
            raise C.ConfigError(f"{where}.inline: expected a config mapping")
        C.refuse_empty(item["inline"], f"{where}.inline")
        data, key = item["inline"], item.get("label", f"setting{i}")
        label = key
    overrides = _overrides(item.get("set"), f"{where}.set")
    _check_no_grid_key(item.get("set"), grid, f"{where}.set.")
    return Setting(str(key), str(label), data, overrides)


def _grid(value: Any) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise C.ConfigError("grid: expected a non-empty mapping of dotted.key: [values]")
    _check_keys(value, "grid")
    _refuse_seed(value, "grid")
    for key, values in value.items():
        if key in INDEX_COLUMNS:  # index.csv holds the grid values beside its own columns, by axis name
            raise C.ConfigError(f"grid.{key}: an axis named as a column of index.csv would overwrite it; allowed: "
                                f"its fields as dotted keys (e.g. {key}.kind), or one setting per value")
        if not isinstance(values, list) or not values:
            raise C.ConfigError(f"grid.{key}: expected a non-empty list of values")
        twice = first_repeat(values)
        if twice is not None:
            raise C.ConfigError(f"grid.{key}: value {twice!r} is listed twice (the same runs); allowed: distinct "
                                f"values")
    shared = _shared_field({axis: axis_fields(axis, values) for axis, values in value.items()})
    if shared is not None:
        other, axis, f = shared
        raise C.ConfigError(f"grid: axes {other!r} and {axis!r} both vary {f}; allowed: one axis per field")
    return dict(value)


def axis_fields(axis: str, values: list) -> list[str]:
    """The fields a grid axis varies: those its values set (an axis of mappings, ``optim: [{lr: 0.1}]``, varies
    only the keys they name)."""
    return list(dict.fromkeys(f for v in values for f in _fields(axis, v)))


def study_from_dict(data: dict, base: Path = Path("."), seeds: int | None = None) -> Study:
    """Validate a study mapping (``seeds`` overrides the file's seeds with 0..seeds-1)."""
    if not isinstance(data, dict):
        raise C.ConfigError("study: expected a mapping")
    unknown = set(data) - set(STUDY_KEYS)
    if unknown:
        raise C.ConfigError(f"study: unknown key(s) {sorted(unknown)}; allowed: {', '.join(STUDY_KEYS)}")
    scale = data.get("scale", "mini")
    if scale not in SCALES:
        raise C.ConfigError(f"scale: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    figure = data.get("figure", "generic")
    if figure not in FIGURES:
        raise C.ConfigError(f"figure: unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")
    items = data.get("settings")
    if not isinstance(items, list) or not items:
        raise C.ConfigError("settings: expected a non-empty list of settings (preset, config or inline)")
    name = data.get("name", "study")
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise C.ConfigError(f"name: {name!r} is not a plain name (it names the default study directory "
                            f"studies/NAME); allowed: letters, digits and _ . @ + = - (no / or ..)")
    grid = _grid(data.get("grid"))
    final, overrides = _overrides(data.get("override"), "override"), _overrides(data.get("set"), "set")
    _check_no_grid_key(data.get("override"), grid, "override (gst sweep --set) ")
    _check_no_grid_key(data.get("set"), grid, "set.")
    study_seeds = _seeds(seeds if seeds is not None else data.get("seeds", 1))
    n_runs = len(items) * math.prod(len(v) for v in grid.values()) * len(study_seeds)
    if n_runs > MAX_RUNS:
        raise C.ConfigError(f"study: {n_runs:,} runs (settings x grid x seeds); allowed: at most {MAX_RUNS:,}")
    return Study(
        name=name, figure=figure, scale=scale, seeds=study_seeds,
        settings=tuple(_setting(item, i, scale, base, grid) for i, item in enumerate(items)),
        grid=grid, overrides=overrides, final=final, base=base,
        scale_read="scale" not in data or has_preset(items),
    )


def _check_no_grid_key(keys: Any, grid: dict[str, list], where: str) -> None:
    """A key the grid varies, set in ``keys`` (``where``: how to name it): an override would make the grid's
    points one run, a ``set`` (of the study or a setting) would be replaced by every grid point."""
    if not isinstance(keys, dict):
        return  # refused by _overrides
    varied = [(f, axis) for axis, values in grid.items() for f in axis_fields(axis, values)]
    for key, target in ((k, f) for k, v in keys.items() for f in _fields(k, v)):
        for varies, axis in varied:
            if _overlap(target, varies):
                via = "" if varies == axis else f" (grid.{axis})"
                raise C.ConfigError(f"{where}{key}: the study's grid varies {varies}{via}; allowed: a key the grid "
                                    f"does not vary (change the grid instead)")


def load_study_file(path: str | Path, seeds: int | None = None) -> tuple[Study, dict]:
    """The validated study in ``path`` and its raw mapping."""
    data = C.load_yaml(path)
    return study_from_dict(data, Path(path).parent, seeds), data


def self_contained(raw: dict, study: Study) -> str:
    """The YAML of ``raw`` (seeds as a list) with each ``config:`` file setting replaced by its content
    (``inline:`` under the same label, so the same key and run ids): the study.yaml a sweep writes into its
    study directory then expands the same from anywhere and records the files as they were run. Where that
    text would pass the YAML size limit, the files are named by absolute path instead."""
    def written(inline: bool) -> str:
        items = [_written_setting(item, setting, study.base, inline)
                 for item, setting in zip(raw.get("settings") or [], study.settings)]
        return yaml.safe_dump({**raw, "settings": items, "seeds": list(study.seeds)}, sort_keys=False)

    text = written(inline=True)
    return text if len(text) <= safeyaml.MAX_BYTES else written(inline=False)


def _written_setting(item: dict, setting: Setting, base: Path, inline: bool) -> dict:
    """A ``config:`` setting as its content (``inline``) or by absolute path; any other setting as it is."""
    if "config" not in item:
        return item
    if not inline:
        return {**item, "config": str((base / item["config"]).resolve())}
    return {"inline": setting.data, "label": setting.label, **({"set": item["set"]} if "set" in item else {})}


# ------------------------------------------------------------------------------------------------ expansion


def _refuse_collapsed_point(first: StudyRun, setting: str, seed: int, point: dict[str, Any]) -> None:
    """Two grid points of one setting and seed that are one run: a value the grid lists would never run (values
    differing only in fields kept out of the run id, e.g. ``train.channels_last``)."""
    if (first.setting, first.seed) == (setting, seed) and first.grid != point:
        raise C.ConfigError(f"grid: points {first.grid} and {point} of setting {setting!r} give one run on this "
                            f"machine (equal once parsed, or differing only in fields outside the run id, e.g. "
                            f"train.channels_last, or resolving alike here, e.g. train.precision auto on a CPU); "
                            f"allowed: values that give different runs")


def has_preset(items: Any) -> bool:
    """Whether a study's ``settings`` list holds a preset setting, the only kind that reads ``scale:``."""
    return isinstance(items, list) and any(isinstance(item, dict) and "preset" in item for item in items)


def setting_notes(study: Study) -> list[str]:
    """Warnings about the settings: a setting's own seed, which each run replaces by one of the study's seeds (a
    config gstlab wrote holds its run's seed, so a pasted one is common), and a ``scale:`` no preset setting reads
    (config and inline settings give their own sizes); said, not refused."""
    default = C.RunConfig().seed
    unread = [] if study.scale_read else [f"scale: {study.scale!r} is read only by preset settings and this study "
                                          f"has none; its config and inline settings give their own sizes"]
    return unread + [f"setting {s.key!r}: its config's seed {s.data['seed']!r} is replaced by each of the study's "
                     f"seeds" for s in study.settings if isinstance(s.data, dict) and s.data.get("seed", default)
                     != default]


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def expand(study: Study) -> list[StudyRun]:
    """Every run of the study, validated; identical configs appear once (the first occurrence)."""
    runs: dict[str, StudyRun] = {}
    owner: dict[tuple[str, str], int] = {}  # (label, arch) -> the setting whose runs the report groups under it
    by_arch = study.figure in ARCH_SPLIT
    for i, setting in enumerate(study.settings):
        for point in grid_points(study.grid):
            for seed in study.seeds:
                overrides = [*study.overrides, *setting.overrides, *(_assignment(k, v) for k, v in point.items()),
                             *study.final, f"seed={seed}"]
                try:
                    cfg = C.check_intent(C.parse(setting.data, overrides))
                except C.ConfigError as err:
                    raise C.ConfigError(f"setting {setting.key!r}: {err}") from None
                rid = C.run_id(cfg)
                if rid in runs:
                    first = runs[rid]
                    _refuse_collapsed_point(first, setting.key, seed, point)
                    runs[rid] = dataclasses.replace(first, aliases=(*first.aliases, setting.key))
                else:
                    _claim_label(owner, setting.label, cfg.model.arch if by_arch else "", i)
                    runs[rid] = StudyRun(rid, setting.key, setting.label, seed, point, cfg)
    return list(runs.values())


def _claim_label(owner: dict[tuple[str, str], int], label: str, arch: str, i: int) -> None:
    """The report groups runs by label (within an architecture where ``arch`` is given): two settings with
    different runs in one group would be pooled, so they are refused."""
    first = owner.setdefault((label, arch), i)
    if first != i:
        on = f" (arch {arch})" if arch else ""
        raise C.ConfigError(f"settings[{i}]: label {label!r}{on} is already used by settings[{first}], whose runs "
                            f"differ; the report would pool them: give each setting its own label")


# --------------------------------------------------------------------------------------------------- index


def _largest_layer_rate(cfg: C.RunConfig) -> float:
    """Percent of the most-pruned layer removed per event (Figure 3's iterative pruning rate)."""
    from gstlab.pruning.schedule import iterative_rate  # noqa: PLC0415

    layers = cfg.pruning.layers
    if not layers:
        return math.nan
    layer = max(layers, key=lambda lay: lay.fraction)
    return iterative_rate(layer.fraction, layer.start, layer.end, cfg.pruning.period_of(layer))


def index_row(run: StudyRun, run_dir: Path, status: str) -> dict:
    cfg = run.cfg
    prunes = bool(cfg.pruning.layers)
    return {
        "run_id": run.run_id, "setting": run.setting, "label": run.label, "seed": run.seed,
        "arch": cfg.model.arch, "criterion": cfg.pruning.criterion if prunes else "",
        "side": cfg.pruning.side if prunes else "", "period": cfg.pruning.period if prunes else "",
        "iterative_rate": _largest_layer_rate(cfg) if prunes and not cfg.pruning.scratch else "",
        "intervention": cfg.intervention.kind, "batches": cfg.intervention.batches,
        **run.grid, "run_dir": str(run_dir.resolve()), "status": status,
    }


RUN_STATUSES = ("finished", "failed", "damaged", "running", "pending")  # what run_status returns


def run_status(run_dir: Path) -> str:
    """finished | failed (files verified), damaged (a result file is damaged: the next sweep redoes it),
    running (a checkpoint exists) or pending."""
    from gstlab import recovery  # noqa: PLC0415

    in_study = run_dir.parent.name == "runs"  # a study's runs/<run_id>: it must hold that run
    summary, problem = recovery.verify_finished(run_dir, run_id=run_dir.name if in_study else None)
    if summary is not None:
        return str(summary["status"])
    if problem is not None:
        return "damaged"
    checkpoints = (run_dir / store.CHECKPOINT, run_dir / store.PREVIOUS_CHECKPOINT)
    return "running" if any(p.exists() for p in checkpoints) else "pending"


def write_index(study_dir: Path, study: Study, runs: list[StudyRun], store_dir: Path,
                statuses: dict[str, str] | None = None) -> list[dict]:
    """Write index.csv; ``statuses``: run id -> status where known (the others are looked up)."""
    known = statuses or {}
    rows = [index_row(r, store_dir / "runs" / r.run_id,
                      known.get(r.run_id) or run_status(store_dir / "runs" / r.run_id)) for r in runs]
    columns = [*INDEX_COLUMNS, *study.grid, "run_dir", "status"]
    store.write_checked_text(study_dir / "index.csv", store.csv_text(rows, columns))
    return rows
