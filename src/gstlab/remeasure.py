"""Flatness of a saved model (``gst flatness RUN_DIR``): rebuild the run from the config in its checkpoint, load
the weights and masks, and measure as a probe during training would (``gstlab.flatness.measure``; and
``gstlab.measures``: distance from the initialization that prepare rebuilds from the run's seed, prunability)."""

from __future__ import annotations

from pathlib import Path

from gstlab import config as C
from gstlab import store
from gstlab.flatness import ProbeError, measure
from gstlab.measures import end_measures, initial_parameters
from gstlab.models import load_unsaved_buffers
from gstlab.runner import prepare, run_threads
from gstlab.seeding import derive_seed


class CheckpointError(ProbeError):
    """The file is missing or is not a gstlab model checkpoint."""


def load_model_checkpoint(run_dir: Path, epoch: int | None) -> dict:
    """The saved model of ``run_dir`` (``model_epoch{E}.pt`` or ``model_final.pt``), loaded weights-only."""
    path = run_dir / ("model_final.pt" if epoch is None else f"model_epoch{epoch}.pt")
    saved = sorted(p.name for p in run_dir.glob("model_*.pt"))
    if not saved and not (run_dir / "config.yaml").exists() and not (run_dir / "manifest.json").exists():
        what = ("no such directory" if not run_dir.exists() else
                "not a directory; give the run directory that holds model_final.pt" if not run_dir.is_dir() else
                "a study directory; give one of its runs, RUN_DIR = runs/<run_id>" if (run_dir / "index.csv").exists()
                else "not a run directory (no config.yaml); give the --out of `gst run` or a study's runs/<run_id>")
        raise CheckpointError(f"{run_dir}: {what}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (saved models: {', '.join(saved) or 'none'}; keep more "
                              "with train.keep_checkpoints=[...])")
    try:
        state = store.load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 (unpickling refuses anything that is not plain tensors/containers)
        raise CheckpointError(f"{path}: not a gstlab checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != store.CHECKPOINT_FORMAT or state.get("kind") != "model":
        raise CheckpointError(f"{path}: not a gstlab model checkpoint (format {store.CHECKPOINT_FORMAT} expected)")
    return state


NOT_EPS = "no eps directions are swept (--eps-directions, or the run's probes.eps_directions, is 0)"


def check_used(probes: C.ProbeConfig, overrides: dict) -> None:
    """ConfigError for a setting given (``overrides``: probe field -> value, the flags of ``gst flatness``) for
    a measurement ``probes`` does not make: it would be accepted and ignored."""
    unused = {key: (f"{what} is not measured (neither --{flag} nor the run's probes.{switch})", f"add --{flag}")
              for switch, (what, settings) in C.OPTIONAL_MEASURES.items() if not getattr(probes, switch)
              for flag in [switch.replace("_", "-")] for key in settings}
    if not probes.eps_directions:
        unused["eps_samples"] = (NOT_EPS, "add --eps-directions D (D > 0)")
    for key, (why, allowed) in unused.items():
        if key in overrides:
            flag = "--" + key.replace("_", "-")
            raise C.ConfigError(f"{flag}: {why}; allowed: {allowed}, or leave {flag} out")
    if "top_k" in overrides and "eps_directions" not in overrides and probes.eps_directions > probes.top_k:
        raise C.ConfigError(f"--top-k {probes.top_k}: the run sweeps {probes.eps_directions} eps directions, one "
                            f"per eigenvector; allowed: --top-k >= {probes.eps_directions}, or add --eps-directions "
                            f"D with D <= {probes.top_k}")


def measure_checkpoint(run_dir: Path, epoch: int | None, overrides: dict, seed: int | None = None,
                       progress: bool = True, device: str | None = None):
    """Rebuild the run's model and data, load the checkpoint and measure; returns (row, eps_rows).
    ``device``: where to measure (default: the run's ``train.device``)."""
    state = load_model_checkpoint(run_dir, epoch)
    cfg = C.from_dict(C.RunConfig, state["config"])
    # through from_dict, so a command-line value gets the same type and finiteness checks as a config file's
    probes = C.from_dict(C.ProbeConfig, {**C.to_dict(cfg.probes), **overrides}, "probes")
    train = cfg.train if device is None else C.from_dict(C.TrainConfig, {**C.to_dict(cfg.train), "device": device},
                                                         "train")
    check_used(probes, overrides)
    cfg = C.validate(C.replace(cfg, probes=probes, train=train))
    with run_threads(cfg.train):
        run = prepare(cfg, run_dir)
        init = initial_parameters(run.model)  # prepare builds the model as the run was initialized
        run.model.load_state_dict(state["model"])
        load_unsaved_buffers(run.model, state.get("buffers", {}))
        run.masks.refresh()
        x, y = run.trainer.eval_data
        seed = derive_seed(cfg.seed, "probe") if seed is None else seed
        row, eps_rows = measure(run.model, run.masks, x, y, cfg.probes, seed, cfg.train.eval_batch_size, progress)
        train = run.trainer.train_batches
        row.update(end_measures(run.model, run.masks, init, train.x, train.y, cfg.probes,
                                cfg.train.eval_batch_size, seed))
    row.update(epoch=state["epoch"], trigger="cli")
    return row, [dict(r, epoch=state["epoch"]) for r in eps_rows]
