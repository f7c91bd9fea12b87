"""The README's demo: No Pruning vs Prune_S 13% vs Prune_L 13% of Figure 2 at `mini` scale, on a CPU.

Three presets of the paper at the scale that keeps its clock (325 epochs, the paper's schedule; a narrow
VGG11 on 2,000 Fashion-MNIST images at 16x16), run as a small study on two single-threaded worker processes.
Only the side differs between the two pruned runs, so any difference in stability and accuracy comes from
*which* filters are removed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gstlab.executors import Resources, sweep
from gstlab.study import expand, study_from_dict

METHODS = (("No Pruning", "F2_VGG_0"), ("Prune_S 13%", "F2_VGG_2"), ("Prune_L 13%", "F2_VGG_4"))


def demo_study(seed: int = 0) -> dict:
    return {"name": "demo", "figure": "figure2", "scale": "mini", "seeds": [seed],
            "settings": [{"preset": preset} for _, preset in METHODS], "set": {"probes.epochs": []}}


def run_demo(out: Path = Path("runs/demo"), seed: int = 0, workers: int = 2, progress: bool = True,
             tensorboard: bool = False) -> list[tuple[str, dict]]:
    """Run (or resume) the three runs; returns (label, summary) in METHODS order."""
    raw = demo_study(seed)
    study = study_from_dict(raw)
    sweep(study, raw, out, "local", Resources(workers=workers, threads=1), progress=progress, tensorboard=tensorboard)
    paths = {r.setting: out / "runs" / r.run_id / "summary.json" for r in expand(study)}
    return [(label, json.loads(paths[p].read_text()) if paths[p].exists() else {"status": "failed"})
            for label, p in METHODS]


def computed_on(out: Path, seed: int = 0) -> list[str]:
    """Where the demo's runs were computed (from their manifests), to print beside the table: a table compares
    with another only from the same kind of machine."""
    import pandas as pd  # noqa: PLC0415

    from gstlab.analysis.results import machine_lines  # noqa: PLC0415

    dirs = [out / "runs" / r.run_id for r in expand(study_from_dict(demo_study(seed)))]
    return machine_lines(pd.DataFrame({"run_dir": dirs}))


def format_table(results: list[tuple[str, dict]]) -> str:
    lines = [f"{'method':12s} {'mean stability':>15s} {'best test acc':>14s} {'final acc':>10s} "
             f"{'gap':>6s} {'params kept':>12s}"]
    for label, summary in results:
        if summary.get("status") != "finished":
            lines.append(f"{label:12s} {summary.get('status', 'failed')} (see its log under logs/)")
            continue
        s = {k: math.nan if v is None else v for k, v in summary.items()}  # summary.json writes NaN as null
        kept = s["params_remaining"] / s["params_total"]
        lines.append(f"{label:12s} {s['mean_stability']:14.2f}% {s['best_test_acc']:13.2f}% "
                     f"{s['final_test_acc']:9.2f}% {s['generalization_gap']:6.2f} {kept:11.1%}")
    return "\n".join(lines)
