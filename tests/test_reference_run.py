"""A machine checks itself against a committed reference run (issue 25).

tests/data/reference_run.json holds a short pruned run (F2_VGG_4, Prune_L 13%, at smoke scale) made in portable
mode (``gst --portable``: ATen and oneDNN pinned to AVX2, MKL to its COMPATIBLE branch, one thread): the digest of
its final weights, its summary and per-epoch numbers, and the machine and torch that made it. The test reruns it
in a fresh portable process and compares the weights' digest and every recorded value as text, which is bit for
bit (floats are written as their shortest exact repr). The digest matters: a printed training loss can agree
while the weights differ in their last bits.

Where the reference's conditions hold (same torch version, the same CPU model name, vendor, family, model and
stepping) a difference fails the test. Elsewhere the run is still compared: identical passes; different is
reported as a skip naming both machines, whether the final weights agree, and the first differing value, because
portable mode does not make every machine compute the same bits (docs/decisions.md, "Where results reproduce";
which kernels differ: test_kernel_fingerprint.py). Regenerate (only when a change is meant to change results):
``python tests/test_reference_run.py --write``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from gstlab import portable
from gstlab.environment import cpu_id, cpu_model, native_isa
from gstlab.store import state_digest

REFERENCE = Path(__file__).parent / "data" / "reference_run.json"
PRESET, SCALE = "F2_VGG_4", "smoke"
SUMMARY_KEYS = ("status", "run_id", "best_test_acc", "best_epoch", "final_test_acc", "generalization_gap",
                "mean_stability", "n_events", "params_remaining")
EPOCH_KEYS = ("train_acc", "train_loss", "test_acc_pre", "test_acc", "test_loss", "units_pruned")


def portable_env() -> dict[str, str]:
    """This process's environment for a fresh process that pins its own kernels (pinned variables out, switch on)."""
    return {k: v for k, v in os.environ.items() if k not in portable.PINNED_ENV} | {portable.SWITCH: "1"}


def portable_run(out: Path) -> dict:
    """Run the reference's configuration in a fresh process in portable mode; its record as compared."""
    proc = subprocess.run([sys.executable, "-m", "gstlab.cli", "run", "--preset", PRESET, "--scale", SCALE, "--set",
                           "probes.epochs=[]", "--no-progress", "--out", str(out)], env=portable_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"the reference run exited {proc.returncode}: {proc.stderr[-600:]}"
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as f:
        epochs = [{k: row[k] for k in EPOCH_KEYS} for row in csv.DictReader(f)]
    machine = json.loads((out / "manifest.json").read_text())["machine"]
    final = torch.load(out / "model_final.pt", weights_only=False)
    weights = state_digest({"model": final["model"], "buffers": final["buffers"]})
    return {"weights": weights,
            "conditions": {"torch": torch.__version__, "cpu_model": machine["cpu_model"], "cpu_id": machine["cpu_id"],
                           "cpu_isa": machine["cpu_isa"], "aten_capability": machine["aten_capability"],
                           "torch_threads": machine["torch_threads"], "portable": machine["portable"]},
            "summary": {k: repr(summary.get(k)) for k in SUMMARY_KEYS}, "epochs": epochs}


def first_difference(ref: dict, got: dict) -> str | None:
    """The first recorded value that differs, and whether training computed the same final weights (a printed
    loss can agree while weights differ in their last bits; an evaluation can differ while weights agree)."""
    value = _first_value_difference(ref, got)
    if ref["weights"] != got["weights"]:
        return f"final weights differ (training); {value or 'every recorded value agrees'}"
    return None if value is None else f"final weights identical, {value}"


def _first_value_difference(ref: dict, got: dict) -> str | None:
    for key in SUMMARY_KEYS:
        if ref["summary"][key] != got["summary"][key]:
            return f"summary {key}: {ref['summary'][key]} vs {got['summary'][key]}"
    for epoch, (a, b) in enumerate(zip(ref["epochs"], got["epochs"], strict=True)):
        for key in EPOCH_KEYS:
            if a[key] != b[key]:
                return f"epoch {epoch} {key}: {a[key]} vs {b[key]}"
    return None


def test_first_difference_says_whether_training_or_only_evaluation_differs():
    ref = {"weights": "w", "summary": dict.fromkeys(SUMMARY_KEYS, "1"), "epochs": [dict.fromkeys(EPOCH_KEYS, "1")]}
    same = json.loads(json.dumps(ref))
    assert first_difference(ref, same) is None
    evaluation = json.loads(json.dumps(ref))
    evaluation["epochs"][0]["test_loss"] = "2"
    assert first_difference(ref, evaluation) == "final weights identical, epoch 0 test_loss: 1 vs 2"
    training = json.loads(json.dumps(ref)) | {"weights": "v"}
    assert first_difference(ref, training) == "final weights differ (training); every recorded value agrees"


def judge(want: dict, have: dict, difference: str | None, what: str) -> None:
    """The policy of the committed references: nothing different passes; under the reference's conditions (same
    torch, CPU model name and cpu_id) a difference fails; elsewhere it is a skip naming both machines."""
    if difference is None:
        return
    where = (f"reference: {want['cpu_model']} [{want['cpu_id']}] ({want['cpu_isa']}), torch {want['torch']}; this "
             f"machine: {have['cpu_model']} [{have['cpu_id']}] ({have['cpu_isa']}), torch {have['torch']}")
    same = all(want[k] == have[k] for k in ("torch", "cpu_model", "cpu_id"))
    assert not same, f"{what}: not bit-identical to the reference under the reference's conditions ({where}): " \
                     f"{difference}"
    pytest.skip(f"{what}: not bit-identical to the reference on another machine type or torch ({where}): "
                f"{difference}; see docs/decisions.md (Where results reproduce)")


needs_x86_avx2 = pytest.mark.skipif(native_isa() not in ("AVX2", "AVX512"),
                                    reason="portable mode pins x86 AVX2 kernels; this CPU has no AVX2")


@needs_x86_avx2
def test_reference_run(tmp_path):
    ref = json.loads(REFERENCE.read_text())
    got = portable_run(tmp_path / "run")
    assert got["conditions"]["portable"] and got["conditions"]["aten_capability"] == "AVX2"
    assert got["conditions"]["torch_threads"] == 1
    assert (got["conditions"]["cpu_model"], got["conditions"]["cpu_id"]) == (cpu_model(), cpu_id())
    judge(ref["conditions"], got["conditions"], first_difference(ref, got), "the portable run")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory() as tmp:
        record = portable_run(Path(tmp) / "run")
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {REFERENCE}: {record['conditions']}")
