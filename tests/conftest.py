"""The suite pins numbers computed on a CPU (run ids name the resolved precision, which is bf16 on a GPU; GPU
kernels are not bit-deterministic), so a GPU is hidden from it. tests/test_device.py holds the tests of the
device-dependent code paths: they run on the CPU everywhere and, with ``GSTLAB_TEST_DEVICE=cuda``, on the GPU,
where every other test is skipped (docs/reliability.md, "Tests on a GPU")."""

from __future__ import annotations

import os

import pytest

DEVICE = os.environ.get("GSTLAB_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first asks for a GPU


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"GSTLAB_TEST_DEVICE={DEVICE}: only tests/test_device.py runs (the rest pins "
                                   f"CPU numbers)")
    for item in items:
        if item.path.name != "test_device.py":
            item.add_marker(skip)
