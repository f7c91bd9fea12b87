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


def test_an_already_pinned_process_is_accepted(monkeypatch):
    for key, value in portable.PINNED_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(portable.SWITCH, "")  # recorded, so that teardown removes what pin() sets
    portable.pin()
    assert portable.requested() and portable.pinned()


@pytest.mark.parametrize(("value", "on"), [("1", True), ("", False), ("0", False)])
def test_switch(monkeypatch, value, on):
    monkeypatch.setenv(portable.SWITCH, value)
    assert portable.requested() is on


def test_manifest_names_the_machine_and_kernels():
    info = machine()
    assert info["cpu_model"] and info["cpu_isa"] and info["torch_threads"] >= 1
    assert isinstance(info["aten_capability"], str) and info["aten_capability"]
    assert "gpu" in info and "onednn_max_isa" in info and info["portable"] is False
    json.dumps(info)  # it goes into manifest.json
