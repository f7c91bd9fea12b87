"""Portable mode (issue 25): the pinned environment must be set before torch is imported, and runs say which
kernels computed them. That a portable run reproduces bit for bit: tests/test_reference_run.py."""

import json

import pytest

from gstlab import cli, portable
from gstlab.environment import machine


def test_pinning_after_torch_is_imported_is_refused_in_one_line(monkeypatch, capsys):
    for key in portable.PINNED_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv(portable.SWITCH, raising=False)
    with pytest.raises(portable.PortableError, match="GSTLAB_PORTABLE=1"):
        portable.pin()
    assert cli.main(["--portable", "presets"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("gst: error: --portable") and "\n" not in err


def test_portable_through_the_python_api(tmp_path, monkeypatch):
    """GSTLAB_PORTABLE=1 with gstlab.api ran unpinned (only `gst` pinned): importing gstlab pins before torch, and a
    run in a process that imported torch first is refused instead of running unpinned."""
    import subprocess
    import sys

    from test_reference_run import portable_env

    env = portable_env()
    run = ("from gstlab import api; api.run({'data': {'name': 'synthetic', 'synthetic_shape': [1, 4, 4], "
           "'synthetic_train': 64, 'synthetic_test': 32}, 'model': {'arch': 'mlp', 'hidden': [8]}, "
           "'train': {'epochs': 1, 'batch_size': 32, 'progress': False}}, " + repr(str(tmp_path / "OUT")) + ")")
    pinned = subprocess.run([sys.executable, "-c", run.replace("OUT", "a")], env=env, capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["machine"]["portable"] is True
    late = subprocess.run([sys.executable, "-c", "import torch; " + run.replace("OUT", "b")], env=env,
                          capture_output=True, text=True)
    assert late.returncode == 1 and "PortableError: --portable / GSTLAB_PORTABLE=1: torch was imported" in late.stderr
    assert not (tmp_path / "b" / "summary.json").exists()


def test_an_already_pinned_process_is_accepted(monkeypatch):
    for key, value in portable.PINNED_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(portable.SWITCH, "")  # recorded, so that teardown removes what pin() sets
    portable.pin()
    assert portable.requested() and portable.pinned()


@pytest.mark.parametrize(("value", "on"), [("1", True), ("", False), ("0", False), ("no", False), ("False", False),
                                           ("off", False), ("yes", True)])
def test_switch(monkeypatch, value, on):
    monkeypatch.setenv(portable.SWITCH, value)
    assert portable.requested() is on


def test_manifest_names_the_machine_and_kernels():
    info = machine()
    assert info["cpu_model"] and info["cpu_isa"] and info["torch_threads"] >= 1
    assert isinstance(info["aten_capability"], str) and info["aten_capability"]
    assert "gpu" in info and "onednn_max_isa" in info and info["portable"] is False
    json.dumps(info)  # it goes into manifest.json


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 fma

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
"""


def test_cpu_id_tells_generations_apart_that_share_a_model_name(tmp_path):
    """A VM's model name can hide the CPU's generation ("AMD EPYC" named a Zen 3 and a Zen 4 here, which portable
    mode had to be verified between): the manifest also records vendor, family, model and stepping (the first
    processor's), and where /proc/cpuinfo has no such fields (ARM, no /proc) nothing."""
    from gstlab.environment import cpu_id, machine_text

    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text(X86_CPUINFO)
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert cpu_id(x86) == "AuthenticAMD family 25 model 17 stepping 1"
    assert cpu_id(arm) is None and cpu_id(tmp_path / "missing") is None
    assert machine()["cpu_id"] == cpu_id()
    box = {"aten_capability": "AVX2", "portable": True, "cpu_isa": "AVX512"}
    info = {"device_name": "AMD EPYC", "torch_threads": 1, "versions": {"torch": "2.13.0"}, "git_commit": "0123456789"}
    line = machine_text({**info, "machine": {**box, "cpu_id": cpu_id(x86)}})
    assert line.startswith("AMD EPYC [AuthenticAMD family 25 model 17 stepping 1] (AVX512; AVX2 kernels, portable)")
    assert machine_text({**info, "machine": box}).startswith("AMD EPYC (AVX512; ")  # recorded before cpu_id
    gpu = machine_text({**info, "machine": {**box, "cpu_id": cpu_id(x86), "gpu": "NVIDIA H100"}})
    assert gpu.startswith("NVIDIA H100 (AVX512; ")  # a GPU run: the GPU computed it


def test_a_cpu_run_on_a_gpu_machine_names_no_gpu_and_a_missing_device_is_one_line(monkeypatch):
    """The manifest's gpu says what computed the run, not what the machine has; an absent device is refused."""
    import torch

    from gstlab import config as C
    from gstlab.environment import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"GPU {index}")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert machine(torch.device("cpu"))["gpu"] is None
    assert machine(torch.device("cuda:1"))["gpu"] == "GPU cuda:1" and machine()["gpu"] == "GPU 0"
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(C.ConfigError, match=r"^train.device: 'cuda:2' requested but this machine has 2 GPU\(s\); "
                                            r"allowed here: auto, cpu, cuda, cuda:0..1$"):
        resolve_device("cuda:2")
    with pytest.raises(C.ConfigError, match=r"^train.device: 'mps' requested but MPS \(Apple GPU\) is not available; "
                                            r"allowed here: auto, cpu, cuda, cuda:0..1$"):
        resolve_device("mps")
