"""Tables from the output folders of ``benchmarks/gpu_check.sh`` (each holds a runs.tar.gz): the speed of runs
alone and packed, the projected time of a 325-epoch run and of a 60-run Figure 2 study, and bf16 vs fp32 per
pruning event, set against repeats of the same run (GPU kernels are not bit-deterministic).

    python benchmarks/gpu_report.py OUT_DIR [OUT_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from itertools import combinations
from pathlib import Path

import pandas as pd

EPOCHS = 325  # one Figure 2 run
STUDY_RUNS = 60  # Figure 2 (VGG): 6 settings x 10 seeds


def markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _step_kind(speed: dict) -> str:
    """eager, or the torch.compile mode, with fused when the optimizer update is one kernel."""
    kind = (speed.get("compile_mode") or "default") if speed.get("compile") else "eager"
    return kind + (" + fused" if speed.get("fused_optimizer") else "")


def executions(out_dirs: list[Path], scratch: Path) -> pd.DataFrame:
    """One row per run executed: its folder, sweep, run id, preset, precision and how many runs shared the GPU."""
    rows = []
    for k, out in enumerate(out_dirs):
        target = scratch / str(k)
        with tarfile.open(out / "runs.tar.gz") as tar:
            tar.extractall(target, filter="data")
        for index in target.glob("*/index.csv"):
            if index.parent.name == "e2e":  # the end-to-end check (smoke scale): correctness, not speed
                continue
            sweep = pd.read_csv(index)
            for run in sweep.itertuples():
                run_dir = target / f"store_{index.parent.name}" / "runs" / run.run_id
                manifest = json.loads((run_dir / "manifest.json").read_text())
                speed = manifest["speed"]
                rows.append({"call": out.name, "sweep": index.parent.name, "packed": len(sweep), "run_id": run.run_id,
                             "setting": run.setting, "label": run.label, "precision": speed["precision"],
                             "step": _step_kind(speed), "dir": run_dir})
    return pd.DataFrame(rows)


def speed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per epoch (epoch 0, with cudnn autotuning, left out) and epochs done, per run and sweep."""
    def per_run(run: pd.Series) -> pd.Series:
        metrics = pd.read_csv(run["dir"] / "metrics.csv")
        return pd.Series({"epochs_done": len(metrics), "s_per_epoch": metrics["wall_s"].iloc[1:].median()})
    return pd.concat([runs, runs.apply(per_run, axis=1)], axis=1)


def packing_summary(speed: pd.DataFrame) -> pd.DataFrame:
    """Per sweep: runs on the GPU together, s/epoch per precision, and the epochs per second of all of them."""
    rows = []
    for (call, sweep, step), group in speed.groupby(["call", "sweep", "step"]):
        row = {"call": call, "sweep": sweep, "step": step, "runs": len(group),
               "epochs_per_s": (1 / group["s_per_epoch"]).sum()}
        for precision, sub in group.groupby("precision"):
            row[f"s_per_epoch_{precision}"] = sub["s_per_epoch"].median()
        rows.append(row)
    table = pd.DataFrame(rows)
    alone = table.loc[(table["runs"] == 1) & (table["step"] == "eager"), "epochs_per_s"]
    if len(alone):
        table["vs_eager_alone"] = table["epochs_per_s"] / alone.median()
    table["study_h"] = STUDY_RUNS * EPOCHS / table["epochs_per_s"] / 3600  # 60 runs x 325 epochs, one GPU
    table["run_wall_min"] = EPOCHS / (table["epochs_per_s"] / table["runs"]) / 60  # one run, so packed
    return table


def event_table(runs: pd.DataFrame) -> pd.DataFrame:
    """acc_before/acc_after/instability of every event, one row per execution and event."""
    frames = []
    for run in runs.itertuples():
        events = pd.read_csv(run.dir / "events.csv")
        frames.append(events.assign(call=run.call, sweep=run.sweep, run_id=run.run_id, setting=run.setting,
                                    precision=run.precision, step=run.step,
                                    execution=f"{run.call}/{run.sweep}"))
    return pd.concat(frames, ignore_index=True)


def pair_differences(events: pd.DataFrame) -> pd.DataFrame:
    """|instability difference| (points) per shared event, over pairs of executions: the same run repeated (same
    step kind, or eager vs compiled), or the same preset and seed in bf16 vs fp32 with the same step kind."""
    rows = []
    keyed = events.set_index(["execution", "run_id", "epoch", "layer"])["instability"].sort_index()
    runs = events[["execution", "run_id", "setting", "precision", "step"]].drop_duplicates().to_dict("records")
    for a, b in combinations(runs, 2):
        if a["setting"] != b["setting"]:
            continue
        if a["run_id"] == b["run_id"]:
            kind = "repeat" if a["step"] == b["step"] else f"{a['step']} vs {b['step']}"
        elif a["precision"] != b["precision"] and a["step"] == b["step"]:
            kind = "bf16 vs fp32"
        else:
            continue
        ia, ib = keyed.loc[a["execution"], a["run_id"]], keyed.loc[b["execution"], b["run_id"]]
        shared = ia.index.intersection(ib.index)
        for key in shared:
            rows.append({"setting": a["setting"], "kind": kind, "epoch": key[0], "layer": key[1],
                         "abs_diff_points": 100 * abs(ia[key] - ib[key])})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs = executions(args.out_dirs, Path(scratch))
        speed = speed_table(runs)
        print("## Runs\n")
        print(markdown(speed.drop(columns="dir")))
        print("\n## Packing (all runs of a sweep on one GPU at once)\n")
        print(markdown(packing_summary(speed)))
        events = event_table(runs)
        print("\n## Events: instability (%) per execution\n")
        wide = events.pivot_table(index=["setting", "epoch", "layer"], columns=["precision", "execution"],
                                  values="instability") * 100
        wide.columns = [" ".join(c) for c in wide.columns]
        print(markdown(wide.reset_index()))
        diffs = pair_differences(events)
        print("\n## |Δ instability| (points) between executions, per event\n")
        print(markdown(diffs.groupby(["setting", "kind"])["abs_diff_points"]
                       .agg(["count", "mean", "median", "max"]).reset_index()))


if __name__ == "__main__":
    main()
