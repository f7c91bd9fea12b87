"""Values that are legal but rarely meant: one warning line each, naming the field (``gst run`` prints them;
``gst sweep`` prints each distinct line once for all its runs). Nothing here refuses a config: refusals are
config.py's (ConfigError)."""

from __future__ import annotations

from gstlab import config as C
from gstlab.experiments.presets import stale_window


def surprises(cfg: C.RunConfig) -> list[str]:
    """Values that are legal but rarely meant: one line each, naming the field (the CLI prints them as
    warnings; nothing is refused)."""
    out = []
    if cfg.optim.milestones and cfg.optim.gamma == 1:
        out.append("optim.gamma: 1 with optim.milestones set: the learning rate never changes at the milestones")
    if cfg.optim.lr > 1:
        out.append(f"optim.lr: {cfg.optim.lr} is above 1; the paper's Adam runs use 0.001, its SGD runs 0.1")
    for i, layer in enumerate(cfg.pruning.layers):
        if layer.fraction == 0:
            out.append(f"pruning.layers[{i}].fraction: 0, so {layer.name} is listed but never pruned")
    if cfg.intervention.kind != "none" and cfg.intervention.batches == 0:
        out.append(f"intervention.batches: 0, so the {cfg.intervention.kind} intervention lasts no training batch")
    if cfg.data.label_noise >= 0.5:
        out.append(f"data.label_noise: {cfg.data.label_noise} replaces at least half the training labels")
    stale = stale_window(C.to_dict(cfg))
    return out + ([stale] if stale else [])
