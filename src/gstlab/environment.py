"""Where a run executes and how fast: device, precision, memory format, and the manifest that records them."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gstlab
from gstlab import config as C
from gstlab import portable


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    here = "auto, cpu" + (f", cuda, cuda:0..{gpus - 1}" if gpus else "") + (", mps" if mps else "")
    if device.type == "cuda" and not gpus:
        raise C.ConfigError(f"train.device: {name!r} requested but CUDA is not available; allowed here: {here}")
    if device.type == "cuda" and (device.index or 0) >= gpus:
        raise C.ConfigError(f"train.device: {name!r} requested but this machine has {gpus} GPU(s); allowed here: "
                            f"{here}")
    if device.type == "mps" and not mps:
        raise C.ConfigError(f"train.device: {name!r} requested but MPS (Apple GPU) is not available; allowed here: "
                            f"{here}")
    return device


@dataclass(frozen=True)
class Speed:
    """The fast-path choices for a device. On CPU everything stays plain fp32."""

    precision: str  # of training: fp32 | bf16 (autocast); parameters, optimizer state, evaluations, curvature: fp32
    channels_last: bool
    compile: bool
    device_type: str
    compile_mode: str = "default"
    fused_optimizer: bool = False

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def as_dict(self) -> dict:
        return {"precision": self.precision, "eval_precision": "fp32", "channels_last": self.channels_last,
                "compile": self.compile, "compile_mode": self.compile_mode if self.compile else None,
                "fused_optimizer": self.fused_optimizer}

    def compiled(self, model: nn.Module) -> tuple[nn.Module, list[CudaGraphStep]]:
        """The model a trainer calls, and the per-batch hooks it needs (CUDA graphs need a step marker)."""
        if not self.compile:
            return model, []
        hooks = [CudaGraphStep()] if self.compile_mode == "reduce-overhead" else []
        return torch.compile(model, mode=self.compile_mode), hooks


class CudaGraphStep:
    """Tells torch.compile's CUDA graphs (mode reduce-overhead) that a new step begins, so a replay may reuse the
    memory of the previous step's outputs: the loop keeps only values computed from them. A training hook
    (``before_batch``) and an evaluation hook (called)."""

    def before_batch(self) -> None:
        torch.compiler.cudagraph_mark_step_begin()

    def after_step(self) -> None:
        pass

    def __call__(self) -> None:
        self.before_batch()


def resolve_speed(cfg: C.TrainConfig, device: torch.device) -> Speed:
    cuda = device.type == "cuda"
    precision = C.resolved_precision(cfg, device.type)
    channels_last = cuda if cfg.channels_last == "auto" else cfg.channels_last == "on"
    fused = cuda if cfg.fused_optimizer == "auto" else cfg.fused_optimizer == "on"
    if cuda:
        torch.backends.cudnn.benchmark = True
    return Speed(precision=precision, channels_last=channels_last, compile=cfg.compile, device_type=device.type,
                 compile_mode=cfg.compile_mode, fused_optimizer=fused)


def git_commit() -> str | None:
    """The commit of the gstlab source tree, if it is a git checkout."""
    src = Path(gstlab.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none); read once per process (a manifest
    asks for the model, the id and the flags)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), else what ``platform`` knows."""
    return _cpuinfo(CPUINFO).get("model name") or platform.processor() or platform.machine()


def cpu_id(cpuinfo: Path = CPUINFO) -> str | None:
    """Vendor, family, model and stepping (x86): they tell CPU generations apart where a VM's model name does
    not ("AMD EPYC" names a Zen 3 and a Zen 4 alike). None where /proc/cpuinfo has no such fields."""
    info = _cpuinfo(cpuinfo)
    keys = ("vendor_id", "cpu family", "model", "stepping")
    if not all(info.get(k) for k in keys):
        return None
    return f"{info['vendor_id']} family {info['cpu family']} model {info['model']} stepping {info['stepping']}"


def cpu_flags() -> set[str]:
    return set(_cpuinfo(CPUINFO).get("flags", "").split())


def native_isa() -> str:
    """The best x86 vector instruction set this CPU offers to PyTorch's kernels, whatever is pinned."""
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    return "AVX2" if {"avx2", "fma"} <= flags else (platform.machine() or "unknown")


def machine(device: torch.device | None = None) -> dict:
    """The hardware and kernels that computed a run: where its numbers reproduce (docs/decisions.md). ``gpu``:
    the run's GPU when ``device`` is one, None for a run on another device; without ``device``, the machine's
    first GPU, if any."""
    if device is None:
        gpu = 0 if torch.cuda.is_available() else None
    else:
        gpu = device if device.type == "cuda" else None  # a CPU run on a GPU machine computed nothing there
    return {"cpu_model": cpu_model(), "cpu_id": cpu_id(), "cpu_isa": native_isa(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default (the CPU's best)"),
            "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
            **portable.describe()}


# what an earlier stretch keeps of its manifest: where, with which kernels and by which code it was computed
COMPUTED_ON = ("device", "device_name", "machine", "torch_threads", "speed", "versions", "git_commit")


def kernels(info: dict) -> dict:
    """What in a manifest decides the numbers beside the config: machine and kernels (not its core count),
    threads, device, speed settings and torch."""
    machine_ = {k: v for k, v in (info.get("machine") or {}).items() if k != "cpu_count"}
    return {"machine": machine_, "threads": info.get("torch_threads"), "device": info.get("device"),
            "speed": info.get("speed"), "torch": (info.get("versions") or {}).get("torch")}


def same_kernels(a: dict, b: dict) -> bool:
    """Two manifests' :func:`kernels` agree on every machine field both record (an older gstlab recorded fewer,
    e.g. no ``cpu_id``: a field only one of them has tells nothing)."""
    ka, kb = kernels(a), kernels(b)
    common = ka["machine"].keys() & kb["machine"].keys()
    return ({**ka, "machine": {k: ka["machine"][k] for k in common}}
            == {**kb, "machine": {k: kb["machine"][k] for k in common}})


def recorded_stretches(info: dict) -> list[dict]:
    """A manifest's ``earlier_machines``: the stretches of epochs other machines or kernels computed."""
    return [s for s in info.get("earlier_machines") or [] if isinstance(s, dict)]


def earlier_machines(previous: dict, current: dict, start_epoch: int) -> list[dict]:
    """The stretches of epochs before ``start_epoch`` computed on other machines or kernels than ``current`` (the
    manifest a run resumed at ``start_epoch`` gets), from ``previous`` (the one it had): [] where one kind
    computed every epoch. A manifest from before machines were recorded adds nothing (it tells nothing), nor
    one under which no epoch finished."""
    stretches = recorded_stretches(previous)
    first = stretches[-1]["epochs"][1] + 1 if stretches else 0
    if "machine" in previous and first < start_epoch and not same_kernels(previous, current):
        stretches.append({"epochs": [first, start_epoch - 1], **{k: previous.get(k) for k in COMPUTED_ON}})
    return stretches


def machine_text(info: dict) -> str:
    """A manifest's (or an earlier stretch's) machine in one line: device (a CPU with its vendor, family, model and
    stepping where recorded), vector ISA and kernels (portable or not), threads, torch and gstlab's commit."""
    box = info.get("machine") or {}
    cpu = f" [{box['cpu_id']}]" if box.get("cpu_id") and not box.get("gpu") else ""
    device = box.get("gpu") or f"{info.get('device_name') or 'unknown device'}{cpu}"
    kernels_ = f"{box.get('aten_capability', '?')} kernels{', portable' if box.get('portable') else ''}"
    torch_version = (info.get("versions") or {}).get("torch", "?")
    commit = str(info.get("git_commit") or "no git commit")[:7]
    return (f"{device} ({box.get('cpu_isa', '?')}; {kernels_}), {info.get('torch_threads', '?')} thread(s), "
            f"torch {torch_version}, gstlab {commit}")


def manifest(cfg: C.RunConfig, device: torch.device, speed: Speed, seeds: dict[str, int]) -> dict:
    return {
        "run_id": C.run_id(cfg),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None,
        "seed": cfg.seed,
        "seeds": seeds,
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "speed": speed.as_dict(),
        "versions": {
            "gstlab": gstlab.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "cuda": torch.version.cuda,
        },
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "deterministic": device.type == "cpu",
        "machine": machine(device),
    }

