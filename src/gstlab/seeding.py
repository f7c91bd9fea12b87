"""Explicit random streams: one seed per purpose, derived from the run's seed and recorded with the results."""

from __future__ import annotations

import hashlib

import torch

STREAMS = ("init", "data", "order", "prune", "noise", "probe")


def derive_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for ``stream`` (independent streams, same value on every platform)."""
    digest = hashlib.sha256(f"gstlab/{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream_seeds(seed: int) -> dict[str, int]:
    return {s: derive_seed(seed, s) for s in STREAMS}


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for ``stream``; its state is saved in checkpoints for exact resume."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, stream))
    return g
