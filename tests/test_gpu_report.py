"""benchmarks/gpu_report.py against hand-computed answers on a made-up gpu_check.sh output."""

import importlib.util
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest

SPEC = importlib.util.spec_from_file_location("gpu_report", Path(__file__).parents[1] / "benchmarks" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_report)


def write_run(root: Path, sweep: str, run_id: str, precision: str, walls: list[float], instability: float) -> dict:
    run_dir = root / f"store_{sweep}" / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"speed": {"precision": precision, "compile": False}}))
    pd.DataFrame({"epoch": range(len(walls)), "wall_s": walls}).to_csv(run_dir / "metrics.csv", index=False)
    pd.DataFrame({"epoch": [3], "layer": ["conv5"], "instability": [instability]}).to_csv(run_dir / "events.csv",
                                                                                      index=False)
    return {"run_id": run_id, "setting": "F2_VGG_4", "label": "Prune_L 13%"}


@pytest.fixture
def out_dir(tmp_path):
    root = tmp_path / "work"
    sweeps = {"alone": [write_run(root, "alone", "A", "bf16", [9, 2, 2, 2], 0.01)],
              "packed": [write_run(root, "packed", "A", "bf16", [9, 4, 4], 0.02),
                         write_run(root, "packed", "B", "fp32", [9, 4, 4], 0.05)]}
    for sweep, rows in sweeps.items():
        (root / sweep).mkdir()
        pd.DataFrame(rows).to_csv(root / sweep / "index.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for item in root.iterdir():
            tar.add(item, arcname=item.name)
    return out


def test_packing_rates_and_projections(out_dir, tmp_path):
    speed = gpu_report.speed_table(gpu_report.executions([out_dir], tmp_path / "scratch"))
    table = gpu_report.packing_summary(speed).set_index("sweep")
    assert table.loc["alone", "epochs_per_s"] == pytest.approx(0.5)  # median of the epochs after the first: 2 s
    assert table.loc["packed", "epochs_per_s"] == pytest.approx(0.5)  # two runs at 4 s per epoch
    assert table.loc["packed", "vs_eager_alone"] == pytest.approx(1.0)
    assert table.loc["packed", "study_h"] == pytest.approx(60 * 325 / 0.5 / 3600)
    assert table.loc["packed", "run_wall_min"] == pytest.approx(325 * 4 / 60)


def test_instability_differences_separate_repeats_from_precision(out_dir, tmp_path):
    runs = gpu_report.executions([out_dir], tmp_path / "scratch")
    diffs = gpu_report.pair_differences(gpu_report.event_table(runs)).groupby("kind")["abs_diff_points"]
    assert diffs.mean()["repeat"] == pytest.approx(1.0)  # A alone vs A packed: 1% vs 2%
    assert diffs.mean()["bf16 vs fp32"] == pytest.approx(3.5)  # B (5%) vs A alone (1%) and A packed (2%)
    assert set(diffs.groups) == {"repeat", "bf16 vs fp32"}
