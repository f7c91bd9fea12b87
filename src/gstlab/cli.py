"""The ``gst`` command line: run, presets, demo, flatness, sweep, report.

Exit status: 0 success, 1 a run failed (diverged) or a study had failed runs, 2 bad input (the message names
the field and what is allowed; nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gstlab import config as C

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input that is not a config field."""


def _config_from_args(args: argparse.Namespace) -> C.RunConfig:
    from gstlab.experiments.presets import preset_config  # noqa: PLC0415

    if bool(args.config) == bool(args.preset):
        raise UsageError("give exactly one of --config FILE or --preset NAME")
    data = C.load_yaml(args.config) if args.config else preset_config(args.preset, args.scale)
    overrides = list(args.set or [])
    if args.no_progress:
        overrides.append("train.progress=false")
    return C.parse(data, overrides)


def _default_out(cfg: C.RunConfig) -> Path:
    label = (cfg.name or "run").replace("@", "-").replace("/", "-")
    return Path("runs") / f"{label}-{C.run_id(cfg)}"


def cmd_run(args: argparse.Namespace) -> int:
    from gstlab.runner import execute  # noqa: PLC0415

    cfg = _config_from_args(args)
    out = Path(args.out) if args.out else _default_out(cfg)
    summary = execute(cfg, out)
    _print_summary(out, summary)
    return EXIT_OK if summary.get("status") == "finished" else EXIT_FAILED


def _print_summary(out: Path, s: dict) -> None:
    print(f"run {s.get('run_id')} -> {out}  [{s.get('status')}]")
    if s.get("failure"):
        print(f"  failure: {s['failure']}")
    print(f"  mean stability {s['mean_stability']:.2f}%   best test acc {s['best_test_acc']:.2f}% "
          f"(epoch {s['best_epoch']})   final {s['final_test_acc']:.2f}%   gap {s['generalization_gap']:.2f}")
    print(f"  events {s['n_events']} over {s['n_prune_epochs']} epochs   "
          f"params {s['params_remaining']:,}/{s['params_total']:,}")


def cmd_presets(args: argparse.Namespace) -> int:
    from gstlab.experiments.presets import PRESETS, preset_config  # noqa: PLC0415

    if args.show:
        print(C.dump_yaml(C.parse(preset_config(args.show, args.scale))), end="")
        return EXIT_OK
    print(f"{'preset':12s} {'figure':10s} {'label':20s} {'arch':9s} epochs (smoke/cpu/paper)")
    for name, p in PRESETS.items():
        epochs = "/".join(str(preset_config(name, s)["train"]["epochs"]) for s in ("smoke", "cpu", "paper"))
        print(f"{name:12s} {p.figure:10s} {p.label:20s} {p.paper['model']['arch']:9s} {epochs}")
    print("\nshow one: gst presets --show NAME --scale cpu;   run one: gst run --preset NAME --scale cpu")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gstlab.demo import DEMO_EPOCHS, format_table, run_demo  # noqa: PLC0415

    print(f"gstlab demo: No Pruning vs Prune_S vs Prune_L, VGG11 (width 1/8) on Fashion-MNIST, "
          f"{DEMO_EPOCHS} epochs each\n")
    results = run_demo(Path(args.out), seed=args.seed, progress=not args.no_progress)
    print("\n" + format_table(results))
    print(f"\nper-run results (metrics.csv, events.csv, summary.json): {args.out}/*/")
    return EXIT_OK if all(s.get("status") == "finished" for _, s in results) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gst", description="Train while pruning on a schedule and measure the generalization-stability "
                                "tradeoff (Bartoldson et al., NeurIPS 2020).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train one run (resumes if cut off, skips if finished)",
                         description="Train one run while pruning on its schedule. Writes config.yaml, "
                                     "manifest.json, metrics.csv, events.csv, summary.json and checkpoints to "
                                     "--out. Re-running the same command resumes a killed run; a finished run "
                                     "is not re-run.")
    run.add_argument("--config", metavar="FILE", help="YAML config (sections data, model, optim, train, "
                                                        "pruning, intervention, probes, seed)")
    run.add_argument("--preset", metavar="NAME", help="a paper configuration, e.g. F2_VGG_4 (see `gst presets`)")
    run.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"),
                     help="preset scale (default: cpu)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config field, e.g. --set pruning.period=40 (repeatable)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>-<run id>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    presets = sub.add_parser("presets", help="list the paper's configurations",
                             description="List run presets (every configuration of the paper) with their figure, "
                                         "label and epochs per scale, or print one as YAML.")
    presets.add_argument("--show", metavar="NAME", help="print the resolved config of preset NAME")
    presets.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"))
    presets.set_defaults(func=cmd_presets)

    demo = sub.add_parser("demo", help="No Pruning vs Prune_S vs Prune_L on Fashion-MNIST (minutes on a CPU)",
                          description="Train a narrow VGG11 on a Fashion-MNIST subset three times: without "
                                      "pruning, pruning the smallest-norm filters (Prune_S) and the "
                                      "largest-norm filters (Prune_L) on the same schedule; print mean "
                                      "stability and best test accuracy per method.")
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="where the three runs go")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"gst: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line with exit status 2."""
    from gstlab.data import DataMissingError  # noqa: PLC0415
    from gstlab.runner import RunDirError  # noqa: PLC0415

    return (C.ConfigError, UsageError, DataMissingError, RunDirError)


if __name__ == "__main__":
    sys.exit(main())
