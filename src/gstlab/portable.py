"""Portable mode: pin the CPU kernels so that machines of one vendor and different instruction sets compute the
same bits (Intel and AMD CPUs still differ: docs/decisions.md).

PyTorch picks its CPU kernels by the instruction set of the machine: ATen's vectorized kernels (BatchNorm,
reductions, the optimizer's elementwise ops) use 16 float lanes on AVX-512 and 8 on AVX2, oneDNN's
convolutions block and accumulate differently per ISA, and MKL dispatches its GEMMs per CPU. Each changes the
order of floating-point sums, so a run differs from the first epoch between an AVX-512 and an AVX2 machine.
Portable mode pins ATen and oneDNN to AVX2 (which every x86-64 CPU of the last ten years has), MKL to its
COMPATIBLE branch (the one Intel documents as giving the same results on Intel and non-Intel CPUs: its AVX2
branch exists only on Intel CPUs, and elsewhere MKL silently dispatches by CPU instead) and a run to one thread,
before torch is imported (the libraries read these variables once, at first use). Even so an Intel Xeon and an
AMD EPYC train differently in portable mode, by kernels not yet identified (tests/test_kernel_fingerprint.py
names them once run on both). What this does and does not make identical: docs/decisions.md ("Where results
reproduce").

``gst --portable ...`` or ``GSTLAB_PORTABLE=1`` turn it on; worker processes inherit it.
"""

from __future__ import annotations

import os
import sys

SWITCH = "GSTLAB_PORTABLE"
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorized kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions)
    # MKL's conditional numerical reproducibility: SSE2 without approximate reciprocals, the same code on Intel
    # and AMD (MKL_CBWR=AVX2, used until 2026-12-07, is Intel-only: an AMD CPU ran MKL's own choice)
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",  # reductions split over threads sum in another order
    "MKL_NUM_THREADS": "1",
}


class PortableError(RuntimeError):
    """Portable mode was asked for after torch had been imported without it."""


def requested() -> bool:
    """GSTLAB_PORTABLE set to anything but empty, 0, no, false or off (any case)."""
    return os.environ.get(SWITCH, "").strip().lower() not in ("", "0", "no", "false", "off")


def pinned() -> bool:
    """This process's environment holds the pinned values."""
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def pin() -> None:
    """Set the pinned environment for this process and its children; must run before torch is imported."""
    if pinned():
        os.environ[SWITCH] = "1"
        return
    if "torch" in sys.modules:
        raise PortableError(f"--portable / {SWITCH}=1: torch was imported before the CPU kernels could be "
                            f"pinned; start a new process with {SWITCH}=1 (e.g. `{SWITCH}=1 gst ...`)")
    os.environ.update(PINNED_ENV)
    os.environ[SWITCH] = "1"


def describe() -> dict:
    """What the manifest records about the kernels this process uses (call after torch is imported)."""
    import torch  # noqa: PLC0415

    return {
        "portable": requested() and pinned(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "pinned_env": {k: os.environ.get(k) for k in PINNED_ENV},
        "mkldnn": torch.backends.mkldnn.is_available(),
        "onednn_version": _onednn_version(),
    }


def _onednn_version() -> str | None:
    import torch  # noqa: PLC0415

    for line in torch.__config__.show().splitlines():
        if "MKL-DNN" in line or "oneDNN" in line:
            return line.strip(" -")
    return None
