"""The ``gst`` command line: run, presets, demo, flatness, sweep, report.

Exit status: 0 success, 1 a run failed (diverged, or a probe during training could not measure it), a study had
failed runs, a report left out damaged runs or a disk failed mid-run, 2 bad input (the message names the field
and what is allowed; nothing is written; for ``gst flatness`` also a saved model it cannot measure), 130
interrupted (Ctrl-C), 141 the output was closed early (``gst ... | head``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gstlab import config as C
from gstlab import portable
from gstlab.errors import warn
from gstlab.experiments.presets import SCALES
from gstlab.surprises import surprises

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_PIPE_CLOSED = 128 + 13  # what a shell reports for a process killed by SIGPIPE
EXIT_INTERRUPTED = 128 + 2  # what a shell reports for a process killed by SIGINT (Ctrl-C)
DEFAULT_SCALE = "mini"  # --scale of --preset / --study when not given


class UsageError(Exception):
    """Bad command-line input that is not a config field."""


def _config_from_args(args: argparse.Namespace) -> C.RunConfig:
    from gstlab.experiments.presets import preset_config  # noqa: PLC0415

    if bool(args.config) == bool(args.preset):
        raise UsageError("give exactly one of --config FILE or --preset NAME")
    if args.config and args.scale:
        raise UsageError("--scale applies to --preset only; a config file gives its own sizes (change them with --set)")
    data = C.load_yaml(args.config) if args.config else preset_config(args.preset, args.scale or DEFAULT_SCALE)
    overrides = [f"{key}={value}" for key, value in _set_flags(args.set).items()]
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    return C.check_intent(C.parse(data, overrides))


def _out_arg(value: str | None, flag: str) -> Path | None:
    """The directory a flag names (None when not given); UsageError for an empty one, which would be '.'."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{flag}: empty; give a directory")
    return Path(value)


def _default_out(cfg: C.RunConfig) -> Path:
    label = (cfg.name or "run").replace("@", "-").replace("/", "-")  # config refuses control characters
    return Path("runs") / f"{label}-{C.run_id(cfg)}"


def cmd_run(args: argparse.Namespace) -> int:
    from gstlab import sinks, store  # noqa: PLC0415
    from gstlab.runner import run_or_skip  # noqa: PLC0415

    cfg = _config_from_args(args)
    out = _out_arg(args.out, "--out") or _default_out(cfg)
    if not args.outcome_file:  # a sweep's worker: the sweep warned once for all its runs
        for line in surprises(cfg):
            warn(line)
    summary, executed = run_or_skip(cfg, out)
    if cfg.train.tensorboard and not executed:
        sinks.export_missing(out)  # a run finished earlier without TensorBoard
    if args.outcome_file:  # for the local executor: did this process execute the run?
        store.write_json(Path(args.outcome_file), {"status": summary.get("status"), "executed": executed})
    _print_summary(out, summary, executed)
    return EXIT_OK if summary.get("status") == "finished" else EXIT_FAILED


def _print_summary(out: Path, s: dict, executed: bool = True) -> None:
    print(f"run {s.get('run_id')} -> {out}  [{s.get('status')}{'' if executed else ', earlier'}]")
    if s.get("failure"):
        print(f"  failure: {s['failure']}")
    f = {k: "n/a" if _absent(s.get(k)) else f"{s[k]:.2f}" for k in ("mean_stability", "best_test_acc",
                                                                  "final_test_acc", "generalization_gap")}
    print(f"  mean stability {f['mean_stability']}%   best test acc {f['best_test_acc']}% "
          f"(epoch {s['best_epoch']})   final {f['final_test_acc']}%   gap {f['generalization_gap']}")
    print(f"  events {s['n_events']} over {s['n_prune_epochs']} epochs   "
          f"params {s['params_remaining']:,}/{s['params_total']:,}")
    extras = _summary_extras(s)
    if extras:
        print(f"  {extras}")


def _summary_extras(s: dict) -> str:
    """The early-stopping peak, memorization (label noise) and class detail of a summary, where present."""
    parts = []
    if not _absent(s.get("peak_test_acc")):
        parts.append(f"peak test acc {s['peak_test_acc']:.2f}% (epoch {s['peak_epoch']})")
    for key, text in (("memorization", "memorization {:.2f}%"), ("mean_flips", "mean flips {:.2f}%"),
                      ("worst_class_drop", "worst class drop {:.2f} points")):
        if not _absent(s.get(key)):
            parts.append(text.format(s[key]))
    return "   ".join(parts)


def _absent(value: object) -> bool:
    """A summary value not measured: None, or NaN (e.g. class detail of a run with no pruning event)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def cmd_presets(args: argparse.Namespace) -> int:
    from gstlab.experiments.presets import INVARIANT_EXCEPTIONS, PRESETS, preset_config  # noqa: PLC0415

    _check_presets_flags(args, PRESETS)
    if args.show is not None:
        print(C.dump_yaml(C.parse(preset_config(args.show, args.scale or DEFAULT_SCALE))), end="")
        return EXIT_OK
    if args.studies:
        return _list_studies()
    print(f"{'preset':12s} {'figure':10s} {'label':20s} {'arch':9s} epochs ({'/'.join(SCALES)})")
    for name, p in PRESETS.items():
        epochs = "/".join(str(preset_config(name, s)["train"]["epochs"]) for s in SCALES)
        print(f"{name:12s} {p.figure:10s} {p.label:20s} {p.paper['model']['arch']:9s} {epochs}")
    print("\nschedule invariants (event epochs, non-empty events, staggered layers, milestones between events, "
          "distinct runs) not kept:")
    for scale in SCALES:
        print(f"  {scale:6s} {', '.join(INVARIANT_EXCEPTIONS[scale]) or 'none'}")
    print("\nshow one: gst presets --show NAME --scale mini;   run one: gst run --preset NAME --scale mini")
    return EXIT_OK


def _check_presets_flags(args: argparse.Namespace, presets: dict) -> None:
    """--show NAME prints one preset at --scale; the lists take neither flag (they show every scale)."""
    if args.show is not None and args.studies:
        raise UsageError("--studies: lists the study presets, --show prints one run preset; give one of them")
    if args.scale is not None and args.show is None:
        raise UsageError(f"--scale: only with --show NAME (the lists show every scale: {', '.join(SCALES)})")
    if args.show is not None and args.show not in presets:
        raise UsageError(f"--show: unknown preset {args.show!r}; allowed: a name `gst presets` lists (e.g. "
                         f"{', '.join(list(presets)[:4])})")


def _list_studies() -> int:
    from gstlab.experiments.presets import preset_config  # noqa: PLC0415
    from gstlab.experiments.studies import STUDIES, estimate_minutes, machine_rates, study_dict  # noqa: PLC0415
    from gstlab.study import expand, study_from_dict  # noqa: PLC0415

    rates, machine = machine_rates()
    print(f"{'study':13s} {'figure':9s} {'runs smoke/mini/paper':>22s} {'est. wall min (smoke/mini)':>27s}  "
          f"paper training epochs")
    for name, spec in STUDIES.items():
        runs = [len(expand(study_from_dict(study_dict(name, s)))) for s in SCALES]
        epochs = sum(preset_config(p, "paper")["train"]["epochs"] for p in spec["settings"])
        minutes = "/".join(f"{estimate_minutes(name, s, rates):.0f}" for s in ("smoke", "mini"))
        print(f"{name:13s} {spec['figure']:9s} {'/'.join(map(str, runs)):>22s} {minutes:>27s}  "
              f"{epochs * spec['seeds']['paper']:,}")
    print(f"\nWall minutes on this machine with --workers 2 --threads-per-worker 1 on two free cores: {machine}; "
          f"paper scale wants GPUs (docs/paper.md#compute).\n"
          "run one: gst sweep --study NAME --scale mini;   see its runs: add --dry-run")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gstlab import store  # noqa: PLC0415
    from gstlab.demo import computed_on, format_table, run_demo  # noqa: PLC0415

    out = _out_arg(args.out, "--out")  # a bad --out is one line, before anything is printed
    store.check_dir(out, "--out")
    print("gstlab demo: Figure 2's No Pruning, Prune_S 13% and Prune_L 13% at mini scale (325 epochs, VGG11 on "
          "2,000 Fashion-MNIST images at 16x16), on 2 worker processes\n")
    results = run_demo(out, seed=args.seed, progress=not args.no_progress, tensorboard=args.tensorboard)
    print("\n" + format_table(results))
    print("\n".join(["", *computed_on(out, args.seed)]))
    print(f"\nper-run results (metrics.csv, events.csv, summary.json): {args.out}/runs/*/;  "
          f"report: gst report {args.out}")
    return EXIT_OK if all(s.get("status") == "finished" for _, s in results) else EXIT_FAILED


def _study_from_args(args: argparse.Namespace):
    from gstlab.experiments.studies import study_dict  # noqa: PLC0415
    from gstlab.study import load_study_file, study_from_dict  # noqa: PLC0415

    if bool(args.study_file) == bool(args.study):
        raise UsageError("give exactly one of STUDY_FILE or --study NAME")
    if args.study_file and args.scale:
        raise UsageError("--scale applies to --study presets only; a study file gives its own `scale:`")
    if args.study_file:
        study, raw = load_study_file(args.study_file, seeds=args.seeds)
        base = Path(args.study_file).parent
    else:
        raw, base = study_dict(args.study, args.scale or DEFAULT_SCALE), Path(".")
    if args.set:
        override = dict(raw.get("override") or {})
        for key, value in _set_flags(args.set).items():  # after the file's own: a mapping keeps its other keys
            override[key] = C.merged_section(override.get(key), C.parse_value(key, value))
        raw = {**raw, "override": override}
    return study_from_dict(raw, base, seeds=args.seeds), raw


def _set_flags(assignments: list[str] | None) -> dict[str, str]:
    """``--set`` flags as {key: raw value}; UsageError for one without '=', a key given twice or two keys that set
    one field (``optim.lr=..`` and ``optim={lr: ..}``): one would silently win."""
    from gstlab.study import refuse_same_field  # noqa: PLC0415

    out: dict[str, str] = {}
    for assignment in assignments or []:
        if "=" not in assignment:
            raise UsageError(f"--set {assignment!r}: expected dotted.key=value")
        key, value = assignment.split("=", 1)
        if key.strip() in out:
            raise UsageError(f"--set {key.strip()}: given twice; give each key once")
        out[key.strip()] = value
    try:
        refuse_same_field({k: C.parse_value(k, v) for k, v in out.items()}, "--set")
    except C.ConfigError as err:
        raise UsageError(str(err)) from None
    return out


def _dry_run_estimate(runs: list, store_dir: Path, workers: int, threads: int, local: bool) -> str:
    """One line: what the runs not yet ended in ``store_dir`` cost on this machine (calibrated, cached), in CPU
    minutes and in wall minutes on the sweep's pool of ``workers`` (``local``: sharing this machine's cores)."""
    from gstlab.experiments.studies import pool_seconds, run_estimates  # noqa: PLC0415
    from gstlab.progress import epochs_done  # noqa: PLC0415
    from gstlab.study import run_status  # noqa: PLC0415

    todo = [r for r in runs if run_status(store_dir / "runs" / r.run_id) not in ("finished", "failed")]
    done = [epochs_done(store_dir / "runs" / r.run_id) for r in todo]  # its metrics.csv: its last checkpoint
    seconds, machine = run_estimates([r.cfg for r in todo], done)
    known = [s for s in seconds if s is not None]
    slots = min(workers, os.cpu_count() or 1) if local else workers  # each run counted on one core
    cpu_min, wall_min = sum(known) / 60, pool_seconds(known, slots) / 60
    started = sum(1 for d in done if d)
    missing = f"; {len(seconds) - len(known)} without an estimate (data or model known only from Python)" \
        if len(known) < len(seconds) else ""
    resumed = f" ({started} of them started, counted from their last checkpoint)" if started else ""
    cores = f", {slots} at a time on this machine's cores" if slots < workers else ""
    threaded = f"; its {threads} threads not counted" if threads > 1 else ""
    wall = (f"~{wall_min:,.0f} min on {workers} worker{'s' if workers > 1 else ''}{cores}" if local else
            "wall time as the Ray cluster's free slots allow")
    return (f"estimate: {len(todo)} runs to do{resumed}, ~{cpu_min:,.0f} CPU min, {wall} (each run on one "
            f"core{threaded}){missing}; this machine: {machine}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from gstlab.executors import (  # noqa: PLC0415
        Resources,
        check_out_dirs,
        check_runs,
        default_threads,
        detect_gpus,
        sweep,
    )
    from gstlab.study import expand, setting_notes  # noqa: PLC0415

    study, raw = _study_from_args(args)
    out = _out_arg(args.out, "--out") or Path("studies") / study.name.replace("@", "-")
    store_dir = _out_arg(args.store, "--store")
    gpus = detect_gpus() if args.executor == "local" else int(args.gpus or 0)
    _check_executor_flags(args, gpus)
    per_gpu = args.runs_per_gpu or 1
    workers = args.workers or (gpus * per_gpu if gpus else 1)
    threads = args.threads_per_worker or default_threads(args.executor)
    if args.executor == "local":  # a dry run refuses what the sweep would
        _check_machine(workers, threads, gpus * per_gpu)
    res = Resources(workers=workers, threads=threads, runs_per_gpu=per_gpu, gpus=gpus)
    if args.dry_run:
        runs = expand(study)
        # the sweep's checks: no estimate of a run it would refuse
        check_runs(runs, res, args.executor, Path(store_dir or out), args.tensorboard, setting_notes(study))
        check_out_dirs(out, store_dir)
        print(f"{study.name}: {len(runs)} runs ({len(study.settings)} settings x {len(study.seeds)} seeds"
              f"{' x grid' if study.grid else ''}) -> {out}")
        for r in runs:
            same = f"  (same run as {', '.join(r.aliases)})" if r.aliases else ""
            print(f"  {r.run_id}  {r.setting:12s} {r.label:22s} seed {r.seed}  {r.grid or ''}{same}")
        print(_dry_run_estimate(runs, Path(store_dir or out), workers, threads, args.executor == "local"))
        return EXIT_OK
    outcomes = sweep(study, raw, out, args.executor, res, address=args.address, store_dir=store_dir,
                     progress=not args.no_progress, tensorboard=args.tensorboard)
    failed = [o for o in outcomes if o.status != "finished"]
    executed = sum(o.executed for o in outcomes)
    elsewhere = f", {len(outcomes) - executed} finished meanwhile by another process" if executed < len(outcomes) \
        else ""
    print(f"{study.name}: {executed} runs executed now{elsewhere}, {len(failed)} failed; index: {out / 'index.csv'}")
    for o in failed:
        print(f"  FAILED {o.run_id}: {o.detail}")
    earlier = _failed_in_index(out) - {o.run_id for o in outcomes}
    if earlier:  # final runs are not rerun: the study still has them
        print(f"  {len(earlier)} run(s) failed in an earlier sweep and stay failed: {', '.join(sorted(earlier))} "
              f"(delete a run's directory to run it again)")
    print(f"next: gst report {out}")
    return EXIT_FAILED if failed or earlier else EXIT_OK


def _failed_in_index(study_dir: Path) -> set[str]:
    """Run ids the study's ``index.csv`` (just written by the sweep, read verified) records as failed."""
    from gstlab.analysis.results import read_index  # noqa: PLC0415

    index = read_index(study_dir)
    return set(index.loc[index["status"] == "failed", "run_id"])


def _check_executor_flags(args: argparse.Namespace, gpus: int) -> None:
    """A flag the chosen executor does not read is refused, not ignored (executors.py): local reads --workers and,
    on a machine with GPUs (``gpus``), --runs-per-gpu; Ray reads --address, --gpus and, with --gpus, --runs-per-gpu."""
    if args.executor == "local":
        if args.address is not None:
            raise UsageError("--address: only for --executor ray (a local sweep runs on this machine)")
        if args.gpus is not None:
            raise UsageError("--gpus: only for --executor ray (a local sweep uses the GPUs this machine shows; "
                             "CUDA_VISIBLE_DEVICES chooses them)")
        if args.runs_per_gpu is not None and not gpus:
            raise UsageError("--runs-per-gpu: this machine shows no CUDA GPU to pack runs onto; allowed: without "
                             "it (--workers sets how many runs run at once)")
        return
    if args.workers is not None:
        raise UsageError("--workers: only for --executor local (Ray runs as many runs at once as the cluster's "
                         "nodes hold; size each run with --threads-per-worker)")
    if args.runs_per_gpu is not None and not gpus:
        raise UsageError("--runs-per-gpu: with --executor ray only together with --gpus G > 0 (without it no run "
                         "asks for a GPU)")


MAX_WORKERS_PER_CORE = 4  # local worker processes beyond this many per core only wait for each other


def _check_machine(workers: int, threads: int, gpu_slots: int) -> None:
    """Local sweeps: thread and worker counts within this machine (UsageError, exit 2)."""
    cores = os.cpu_count() or 1
    if threads > cores:
        raise UsageError(f"--threads-per-worker: {threads} asked but this machine has {cores} CPU cores; "
                         f"allowed: 1..{cores}")
    most = max(MAX_WORKERS_PER_CORE * cores, gpu_slots)
    if workers > most:
        raise UsageError(f"--workers: {workers:,} asked but this machine has {cores} CPU cores; allowed: 1..{most}")


def cmd_report(args: argparse.Namespace) -> int:
    from gstlab.analysis.report import write_report  # noqa: PLC0415
    from gstlab.analysis.results import index_text  # noqa: PLC0415

    study_dir = _out_arg(args.study_dir, "STUDY_DIR")
    index = study_dir / "index.csv"
    if not index.is_file():
        raise UsageError(f"{study_dir}: not a study directory (no index.csv file); run `gst sweep` first")
    if not _lists_runs(index_text(study_dir)[0]):  # a damaged or edited index is exit 1 (DamagedFileError) first
        raise UsageError(f"{index}: lists no runs (empty or damaged); run `gst sweep` on the study again to "
                         f"rewrite it (finished runs are not re-run)")
    path = write_report(study_dir)
    print(f"report: {path}")
    return _left_out(study_dir, path.parent / "runs.csv")


def _left_out(study_dir: Path, runs_csv: Path) -> int:
    """List the runs the report left out as damaged or outside the study, with the command that redoes them;
    EXIT_FAILED when there are any."""
    import pandas as pd  # noqa: PLC0415

    from gstlab.analysis.results import LEFT_OUT  # noqa: PLC0415

    runs = pd.read_csv(runs_csv, dtype=str)
    bad = runs[runs["status"].isin(LEFT_OUT)]
    for _, run in bad.iterrows():
        warn(f"run {run['run_id']} left out ({run['status']}): {run.get('failure')}")
    if bad.empty:
        return EXIT_OK
    stores = sorted({str((runs_csv.parent / d).resolve().parent.parent) for d in bad["run_dir"]
                     if (runs_csv.parent / d).resolve().parent.name == "runs"} - {str(study_dir.resolve())})
    store = f" --store {stores[0]}" if len(stores) == 1 else ""
    print(f"gst: {len(bad)} of {len(runs)} runs left out of the report; redo them with: gst sweep "
          f"{study_dir / 'study.yaml'} --out {study_dir}{store}, then gst report {study_dir}", file=sys.stderr)
    return EXIT_FAILED


def _lists_runs(index: str) -> bool:
    """True when the text ``index`` is a CSV with a run_id column and at least one run."""
    import csv  # noqa: PLC0415

    try:
        return any(row.get("run_id") for row in csv.DictReader(io.StringIO(index, newline="")))
    except csv.Error:
        return False


MAX_COUNT = 1_000_000_000  # any count flag: a bigger number is a typo, and would reach file names and allocations


def _device(text: str) -> str:
    """argparse type: a device name (auto, cpu, cuda, cuda:N, mps). Whether this machine has it is checked when
    the command runs: importing torch here would come before ``--portable`` pins its kernels."""
    if not C.DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    return text


def _count(least: int, most: int = MAX_COUNT):
    """argparse type: an integer in ``least..most``; the message names the flag and what is allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        if value > most:
            raise argparse.ArgumentTypeError(f"expected an integer in {least}..{most:,}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def cmd_flatness(args: argparse.Namespace) -> int:
    from gstlab import store  # noqa: PLC0415
    from gstlab.probes import CURVATURE_COLUMNS, EPS_COLUMNS  # noqa: PLC0415
    from gstlab.recovery import FLATNESS_EPS_TABLE, FLATNESS_TABLE  # noqa: PLC0415
    from gstlab.remeasure import measure_checkpoint  # noqa: PLC0415

    run_dir = Path(args.run_dir)
    if args.device is not None:
        from gstlab.environment import resolve_device  # noqa: PLC0415

        try:
            resolve_device(args.device)
        except C.ConfigError as err:
            raise C.ConfigError(f"--device: {str(err).removeprefix('train.device: ')}") from None
    overrides = {k: v for k, v in (("top_k", args.top_k), ("samples", args.samples), ("method", args.method),
                                   ("max_iter", args.max_iter), ("trace_samples", args.trace_samples),
                                   ("eps_directions", args.eps_directions), ("eps_samples", args.eps_samples),
                                   *((_field(s), getattr(args, _field(s)) or None) for s in MEASURED_BY),
                                   *((_field(f), getattr(args, _field(f))) for f, *_ in _measure_settings()))
                 if v is not None}
    row, eps_rows = measure_checkpoint(run_dir, args.epoch, overrides, args.seed, progress=not args.no_progress,
                                       device=args.device)
    _append_csv(run_dir / FLATNESS_TABLE, [row], CURVATURE_COLUMNS, store)
    if eps_rows:
        _append_csv(run_dir / FLATNESS_EPS_TABLE, eps_rows, EPS_COLUMNS, store)
    converged = "" if row["converged"] else ", NOT converged: raise --max-iter"
    print(f"epoch {row['epoch']}: top-{row['k']} eigenvalues ({row['method']}, {row['n_hvp']} HVPs{converged}, "
          f"seed {row['seed']}): max {row['eig_max']:.4g}, sum {row['eig_sum']:.4g}")
    print(f"  gradient second-moment trace {row['grad_moment_trace']:.4g}   TIC {row['tic']:.4g}   "
          f"Hutchinson trace {row['hutchinson_trace']:.4g} +- {row['hutchinson_stderr']:.2g}   "
          f"delta_w(0.1) {row['delta_w']:.3g}   [{row['wall_s']:.1f} s]")
    prunable = (f"   prunability {row['prunability']:.4g} (delta {row['prunability_delta']:g}, "
                f"{row['prunability_samples']} training examples)" if "prunability" in row else "")
    print(f"  distance from init {row['distance_init']:.4g}{prunable}")
    if "pac_bayes_sigma" in row:
        print(f"  PAC-Bayes sigma {row['pac_bayes_sigma']:.4g} (flatness 1/sigma^2 {row['pac_bayes_flatness']:.4g}), "
              f"magnitude-aware {row['pac_bayes_mag_sigma']:.4g} ({row['pac_bayes_mag_flatness']:.4g}); at most "
              f"{row['pac_bayes_drop']:g} points below {row['pac_bayes_acc']:.2f}% on {row['pac_bayes_samples']} "
              f"training examples, {row['pac_bayes_draws']} draws")
    if "sharpness" in row:
        print(f"  adaptive worst-case sharpness {row['sharpness']:.4g} (rho {row['sharpness_rho']:g}, "
              f"{row['sharpness_steps']} ascent steps from {row['sharpness_restarts']} start(s), "
              f"{row['sharpness_samples']} training examples in batches of "
              f"{row['sharpness_batch']}; loss {row['sharpness_loss']:.4g})")
    print(f"  rows appended to {run_dir / FLATNESS_TABLE}")
    return EXIT_OK


def _append_csv(path: Path, rows: list[dict], columns, store) -> None:
    """Add ``rows`` to a table of ``gst flatness``, written with its checksum file (store.write_checked_text);
    a damaged or edited table is set aside and started anew."""
    import csv  # noqa: PLC0415
    import io  # noqa: PLC0415

    try:
        text, _ = store.read_checked_text(path, "`gst flatness`")
        old = list(csv.DictReader(io.StringIO(text)))
    except FileNotFoundError:
        old = []
    except (OSError, csv.Error, store.DamagedFileError):  # binary, a directory, edited: keep it aside
        store.set_aside(path)
        store.checksum_path(path).unlink(missing_ok=True)
        old = []
    store.write_checked_text(path, store.csv_text(old + rows, columns))


MEASURED_BY = {f"--{switch.replace('_', '-')}": what for switch, (what, _) in C.OPTIONAL_MEASURES.items()}


def _measure_settings() -> tuple[tuple[str, Callable, str, str], ...]:
    """(flag, type, metavar, what it sets) of ``gst flatness``'s settings of its optional measurements; a flag
    starts with its measurement's switch (``MEASURED_BY``) and names the probes field it overrides."""
    return (
        ("--prunability-delta", float, "D", "prunability's loss tolerance"),
        ("--prunability-samples", _count(1), "N", "prunability's training subset: the first N training examples"),
        ("--pac-bayes-drop", float, "P", "accuracy points the noise may cost"),
        ("--pac-bayes-draws", _count(1), "M", "noise draws averaged per sigma"),
        ("--pac-bayes-samples", _count(1), "N", "its training subset: the first N training examples"),
        ("--sharpness-rho", float, "R", "its radius, relative to each weight's size"),
        ("--sharpness-steps", _count(1), "S", "gradient ascent steps per batch"),
        ("--sharpness-samples", _count(1), "N", "its training subset: the first N training examples"),
        ("--sharpness-batch", _count(1), "M", "batch size m, each batch with its own worst case"),
        ("--sharpness-restarts", _count(1), "R", "random starts of the ascent per batch, the largest increase counts"),
    )


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gst", description="Train while pruning on a schedule and measure the generalization-stability "
                                "tradeoff (Bartoldson et al., NeurIPS 2020).",
        epilog="exit status: 0 finished; 1 a run failed (diverged, or a probe during training could not measure it), "
               "a study has failed runs, a report left out damaged runs, or a disk turned read-only or full (one "
               "line naming the file); 2 bad input (one line naming the field and what is allowed; nothing is "
               "written; for gst flatness also a saved model it cannot measure: missing, damaged, non-finite "
               "loss); 130 "
               "interrupted (Ctrl-C: rerun to resume); 141 the output was closed early (e.g. by head). Damaged "
               "files are repaired or reported with the command that fixes them: docs/reliability.md.")
    parser.add_argument("--portable", action="store_true",
                        help="pin the CPU kernels (ATen and oneDNN to AVX2, MKL to its Intel/AMD-compatible branch) "
                             "and every run to one thread (also GSTLAB_PORTABLE=1), so that x86 machines of one vendor "
                             "with AVX2 compute the same bits whatever their best ISA (Intel and AMD CPUs still "
                             "differ); slower on AVX-512. What is verified where: docs/decisions.md")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train one run (resumes if cut off, skips if finished)",
                         description="Train one run while pruning on its schedule. Writes config.yaml, "
                                     "manifest.json, metrics.csv, events.csv, events_classes.csv, summary.json "
                                     "and model_final.pt to --out (with probes curvature.csv and eps_sweep.csv, "
                                     "with data.label_noise label_noise.csv, with --tensorboard "
                                     "tensorboard/), and checkpoints while it runs. Re-running the same "
                                     "command resumes a killed run; a finished run is not re-run.")
    run.add_argument("--config", metavar="FILE", help="YAML config (sections data, model, optim, train, "
                                                        "pruning, intervention, probes, seed)")
    run.add_argument("--preset", metavar="NAME", help="a paper configuration, e.g. F2_VGG_4 (see `gst presets`)")
    run.add_argument("--scale", choices=SCALES,
                     help="preset scale: smoke (pipeline check) | mini (the paper's clock, minutes on a CPU core) | "
                          "paper (default: mini); --preset only")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config field, e.g. --set pruning.period=40 (repeatable)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>-<run id>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard event files to RUN_DIR/tensorboard "
                          "(pip install 'gstlab[tensorboard]')")
    run.add_argument("--outcome-file", help=argparse.SUPPRESS)  # the local executor's channel
    run.set_defaults(func=cmd_run)

    presets = sub.add_parser("presets", help="list the paper's configurations",
                             description="List run presets (every configuration of the paper) with their figure, "
                                         "label and epochs per scale, or print one as YAML.")
    presets.add_argument("--show", metavar="NAME", help="print the resolved config of preset NAME")
    presets.add_argument("--scale", choices=SCALES, help="the scale --show prints (default: mini); --show only")
    presets.add_argument("--studies", action="store_true",
                         help="list the study presets (one per figure/table) with run counts and estimated cost "
                              "(not with --show)")
    presets.set_defaults(func=cmd_presets)

    demo = sub.add_parser("demo", help="No Pruning vs Prune_S vs Prune_L on Fashion-MNIST (minutes on a CPU)",
                          description="Run Figure 2's No Pruning, Prune_S 13% and Prune_L 13% presets at mini "
                                      "scale (the paper's 325-epoch schedule on a narrow VGG11 and 2,000 "
                                      "Fashion-MNIST images at 16x16) on two worker processes; print mean "
                                      "stability and best test accuracy per method. Re-running resumes.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="the demo's study directory")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--tensorboard", action="store_true",
                      help="also write each run's TensorBoard events under OUT/tensorboard (tensorboard --logdir OUT)")
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser(
        "sweep", help="run a study: settings x grid x seeds, locally or on Ray (resumable)",
        description="Run every run of a study (a YAML of settings, grid and seeds; or a study preset per figure, "
                    "see `gst presets --studies`). Runs are identified by a hash of their settings: finished runs "
                    "are skipped, cut-off runs resume, and a run that crashes fails alone. Layout: docs/studies.md.")
    sweep.add_argument("study_file", nargs="?", metavar="STUDY_FILE", help="study YAML")
    sweep.add_argument("--study", metavar="NAME", help="a study preset, e.g. fig2_vgg (see `gst presets --studies`)")
    sweep.add_argument("--scale", choices=SCALES,
                       help="scale of a study preset (default: mini); --study only (a study file has `scale:`)")
    sweep.add_argument("--seeds", type=_count(1), metavar="N", help="use seeds 0..N-1 instead of the study's")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field in every run, after each setting's own set and the grid point "
                            "(kept in study.yaml as override:), e.g. --set optim.lr=0.0005 (repeatable); a key "
                            "the grid varies is refused")
    sweep.add_argument("--out", metavar="DIR",
                       help="study directory (default: studies/<name> for a study file, its name: with @ as -; "
                            "studies/<study>-<scale> for --study)")
    sweep.add_argument("--store", metavar="DIR", help="keep run directories in DIR/runs (share runs between studies)")
    sweep.add_argument("--executor", default="local", choices=("local", "ray"))
    sweep.add_argument("--workers", type=_count(1), metavar="N",
                       help="local only: runs at a time (default: GPUs x runs-per-gpu with CUDA, else 1)")
    sweep.add_argument("--threads-per-worker", type=_count(1), metavar="T",
                       help="CPU threads per run (default: local: all cores, use cores/workers; ray: 1)")
    sweep.add_argument("--runs-per-gpu", type=_count(1), metavar="R",
                       help="pack R runs onto each GPU (default 1; local, on a machine with CUDA GPUs: R*GPUs "
                            "workers are useful; ray, with --gpus: num_gpus=1/R); each run sees only its GPU, so "
                            "train.device cuda:N is refused")
    sweep.add_argument("--address", metavar="ADDR",
                       help="ray only: cluster address (default: start a local instance); clusters started by "
                            "`ray start` need RAY_AUTH_MODE=token (README, Studies)")
    sweep.add_argument("--gpus", type=_count(0), metavar="G",
                       help="ray only: request GPUs for the runs (G > 0) or not (0, default); a local sweep uses "
                            "the GPUs this machine shows")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the runs and their ids and estimate the CPU time of those not yet ended on "
                       "this machine (each distinct model timed once, ~2 s, cached); run nothing")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--tensorboard", action="store_true",
                       help="write each ended run's TensorBoard events under STUDY/tensorboard/<label>/ "
                            "(tensorboard --logdir STUDY compares the runs)")
    sweep.set_defaults(func=cmd_sweep)

    flat = sub.add_parser(
        "flatness", help="Hessian spectrum, traces, gradient noise and eps-flatness of a saved model",
        description="Measure flatness of a run's saved model (model_final.pt, or model_epoch{E}.pt kept with "
                    "train.keep_checkpoints): top-k Hessian eigenvalues over the surviving parameters, the "
                    "gradient second-moment trace, TIC, the distance from initialization (surviving parameters) "
                    "and, with --prunability, --pac-bayes and --sharpness, prunability, PAC-Bayes flatness and "
                    "adaptive sharpness, with the run's probe settings unless overridden; eps-flatness along the "
                    "top eigenvectors and the Hutchinson trace where --eps-directions / --trace-samples (or the "
                    "run's settings) are > 0. Appends a row to RUN_DIR/flatness.csv and the eps sweep to "
                    "RUN_DIR/flatness_eps.csv.")
    flat.add_argument("run_dir", metavar="RUN_DIR")
    flat.add_argument("--epoch", type=_count(0, C.MAX_EPOCHS - 1), metavar="E",
                      help="use model_epoch{E}.pt (default: model_final.pt)")
    flat.add_argument("--top-k", type=_count(1), metavar="K", help="number of eigenvalues (default: the run's probes)")
    flat.add_argument("--samples", type=_count(1), metavar="N", help="probe set size: first N evaluation examples")
    flat.add_argument("--method", choices=("lanczos", "power"), help="eigen-solver (default: the run's)")
    flat.add_argument("--max-iter", type=_count(1), metavar="M",
                      help="the solver's step cap (default: the run's probes.max_iter; unset: Lanczos "
                           "min(parameters, max(2K + 20, 3K)) steps, power iteration 20 per eigenpair); the row "
                           "records whether it converged")
    flat.add_argument("--eps-samples", type=_count(1), metavar="N",
                      help="eps-sweep set: first N evaluation examples (default: the run's probes.eps_samples; "
                           "unset: all, as the paper); only where eps directions are swept (--eps-directions D > 0 "
                           "or the run's probes.eps_directions)")
    flat.add_argument("--trace-samples", type=_count(0), metavar="M", help="Hutchinson probes (0: skip)")
    flat.add_argument("--eps-directions", type=_count(0), metavar="D", help="eigenvectors to sweep (0: skip)")
    flat.add_argument("--prunability", action="store_true",
                      help="also measure prunability: the kept fraction of the surviving weights (global magnitude, "
                           "no retraining) found by bisection whose training loss stays within (1 + delta) x the "
                           "model's (the smallest such where the loss grows monotonically as weights go)")
    flat.add_argument("--pac-bayes", action="store_true",
                      help="also measure PAC-Bayes flatness (Jiang et al. 2020): the largest sigma of Gaussian noise "
                           "on the weights, plain and magnitude-aware, that costs at most --pac-bayes-drop points of "
                           "mean training accuracy, and 1/sigma^2")
    flat.add_argument("--sharpness", action="store_true",
                      help="also measure adaptive worst-case sharpness (Andriushchenko et al. 2023): the mean over "
                           "batches of the largest training-loss increase over w + |w|*gamma, ||gamma||_2 <= rho")
    for flag, kind, metavar, what in _measure_settings():
        switch = next(s for s in MEASURED_BY if flag.startswith(f"{s}-"))
        flat.add_argument(flag, type=kind, metavar=metavar,
                          help=f"{what} (default: the run's probes.{_field(flag)}, "
                               f"{getattr(C.ProbeConfig(), _field(flag)):g} unless set); only where "
                               f"{MEASURED_BY[switch]} is measured ({switch} or the run's probes)")
    flat.add_argument("--seed", type=_count(0, 2**63 - 1), help="probe seed (default: derived from the run's seed)")
    flat.add_argument("--device", type=_device, metavar="D",
                      help="measure on D (auto, cpu, cuda, cuda:N, mps; default: the run's train.device), e.g. cpu "
                           "for a GPU run copied to a laptop")
    flat.add_argument("--no-progress", action="store_true")
    flat.set_defaults(func=cmd_flatness)

    report = sub.add_parser("report", help="figures, tables and claim verdicts of a study",
                            description="Read a study directory and write STUDY_DIR/report/: the study's figure(s) "
                                        "as PNG and PDF, tidy tables (runs.csv, epochs.csv, events.csv) and "
                                        "report.md with statistics, a verdict per claim and a table of which "
                                        "generalization measures predict the runs' generalization, and "
                                        "SHA256SUMS of the folder; the folder is built apart and replaces the "
                                        "previous one whole. An index.csv or study.yaml "
                                        "that does not match its .sha256 file is refused (exit 1).")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    report.set_defaults(func=cmd_report)

    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``gst run: error: ...; see gst run --help``), exit status 2."""

    def error(self, message: str):  # noqa: ANN201 (argparse's signature)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.portable or portable.requested():
            portable.pin()  # before any command imports torch
        return args.func(args)
    except _user_errors() as err:
        print(f"gst: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader left early (`gst ... | head`): stop quietly, as a SIGPIPE'd tool does
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        print("gst: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _damaged() as err:  # a file gstlab wrote that no longer matches its checksum
        print(f"gst: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # a read-only or full disk met mid-run: one line naming the path
        print(f"gst: error: {_os_error(err)}", file=sys.stderr)
        return EXIT_FAILED


def _os_error(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
    return f"cannot write or read {where} ({err.strerror or err}); free space or fix permissions, then rerun"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _damaged() -> type[BaseException]:
    from gstlab.store import DamagedFileError  # noqa: PLC0415

    return DamagedFileError


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line with exit status 2."""
    from gstlab.data import DataMissingError  # noqa: PLC0415
    from gstlab.executors import ExecutorError  # noqa: PLC0415
    from gstlab.flatness import ProbeError  # noqa: PLC0415
    from gstlab.runner import RunDirError  # noqa: PLC0415
    from gstlab.store import OutDirError  # noqa: PLC0415

    return (C.ConfigError, UsageError, DataMissingError, RunDirError, ExecutorError, ProbeError, OutDirError,
            portable.PortableError)


if __name__ == "__main__":
    sys.exit(main())
