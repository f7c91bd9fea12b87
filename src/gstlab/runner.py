"""Execute one run in its directory: build everything from the config, resume if cut off, record results.

``execute(cfg, out)`` is idempotent: a finished run is returned from its summary, a run cut off (even by
``kill -9``) resumes from its last checkpoint and ends with the same results as an uninterrupted run (CPU),
and nothing is written before the config, the data and the layer names have been checked.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import inspect
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gstlab import config as C
from gstlab import dataflow, portable, preflight, recovery, sinks, store
from gstlab.analysis.summary import summarize
from gstlab.callbacks import EndRun, EpochCallback, RunView, first_change, observed
from gstlab.class_detail import CLASS_COLUMNS, event_rows, summarize_classes
from gstlab.data import TrainLoader, crop_padding, load_data
from gstlab.data.label_noise import LABEL_COLUMNS, NOISE_COLUMNS, LabelNoise
from gstlab.environment import (
    Speed,
    earlier_machines,
    machine_text,
    manifest,
    recorded_stretches,
    resolve_device,
    resolve_speed,
)
from gstlab.errors import ConfigError, one_line, warn
from gstlab.interventions import Intervention
from gstlab.models import build_model, load_unsaved_buffers, unsaved_buffers
from gstlab.parts import DEFAULT_PARTS, Parts
from gstlab.pruning.masks import UnitMasks
from gstlab.pruning.pruner import Pruner, PruningEvent
from gstlab.pruning.scores import ActivationTracker
from gstlab.registry import criteria
from gstlab.seeding import derive_seed, generator, stream_seeds
from gstlab.train import Pass, Trainer, diverged

LABEL_NOISE_FILE = "label_noise.csv"  # the noisy training examples of a run with data.label_noise > 0


# how messages name the run directory: the CLI's flag, or gstlab.api.run's argument (set there)
OUT_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("out_name", default="--out")


class RunDirError(RuntimeError):
    """The output directory holds a different run (or a damaged one that cannot be told apart)."""


@dataclasses.dataclass
class Run:
    """Everything a running experiment consists of (epoch callbacks see a ``RunView`` of it)."""

    cfg: C.RunConfig
    out: Path
    device: torch.device
    speed: Speed
    model: torch.nn.Module
    masks: UnitMasks
    trainer: Trainer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pruner: Pruner | None
    tracker: ActivationTracker | None
    generators: dict[str, torch.Generator]
    intervention: Intervention | None = None
    label_noise: LabelNoise | None = None
    callbacks: list[EpochCallback] = dataclasses.field(default_factory=list)
    sinks: list[sinks.MetricSink] = dataclasses.field(default_factory=list)  # besides the CSV files
    rows: dict[str, list[dict]] = dataclasses.field(
        default_factory=lambda: {"metrics": [], "events": [], "curvature": [], "eps": [], "classes": []})
    start_epoch: int = 0
    ended: str | None = None  # why an epoch callback ended the run (EndRun)
    parts: Parts = DEFAULT_PARTS  # where the model, data and units came from (to rebuild the run)

    @property
    def scratch(self) -> bool:
        return self.cfg.pruning.scratch

    def view(self) -> RunView:
        """What epoch callbacks see of this run."""
        return RunView(self.cfg, self.out, self.model, self.masks, self.rows)


# ------------------------------------------------------------------------------------------------ building


def prepare(cfg: C.RunConfig, out: Path, parts: Parts = DEFAULT_PARTS) -> Run:
    """Build data, model, optimizer, masks and callbacks; raises ConfigError before anything is written.
    ``parts``: where the model, data and prunable units come from (default: the registries)."""
    parts.check(cfg)
    device = resolve_device(cfg.train.device)
    preflight.check_threads(cfg.train)
    speed = resolve_speed(cfg.train, device)
    data = load_data(cfg.data, seed=derive_seed(cfg.seed, "data"), source=parts.data).to(device)
    if speed.channels_last:
        data.x_train = dataclasses.replace(data.x_train, channels_last=True)
        data.x_test = dataclasses.replace(data.x_test, channels_last=True)
    preflight.check_model_size(cfg.model, data.input_shape, data.num_classes)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, data.input_shape, data.num_classes, parts.model).to(device)
    preflight.check_training_data(cfg, len(data.y_train), data.input_shape, model)
    flow = dataflow.trace(model, data.x_train[0:2], data.num_classes)
    units = parts.units_of(cfg, model)
    dataflow.check_units(model, units, flow)
    C.validate(cfg, [u.name for u in units])
    preflight.check_noise_scale(cfg, model, units)
    preflight.check_probes(cfg, model, units, device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gens = {s: generator(cfg.seed, s) for s in ("order", "prune", "noise")}
    masks = UnitMasks(model, units, bn_masking=cfg.pruning.bn_masking)
    optimizer = build_optimizer(cfg.optim, model, fused=speed.fused_optimizer)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.optim.milestones), cfg.optim.gamma)
    tracker = _tracker(cfg, model, units, flow)
    if tracker is not None:
        preflight.check_activation_start(cfg, math.ceil(len(data.y_train) / cfg.train.batch_size))
        dataflow.check_activations(model, tracked_units(cfg, units), flow)
    trainer = Trainer(
        model=model, optimizer=optimizer,
        train_batches=TrainLoader(data.x_train, data.y_train, cfg.train.batch_size, cfg.data.augment,
                                  gens["order"], crop_padding(data.input_shape),
                                  indexed=data.label_noise is not None),
        eval_data=(data.x_test, data.y_test), eval_batch_size=cfg.train.eval_batch_size,
        autocast=speed.autocast,
    )
    trainer.model, step_hooks = speed.compiled(model)
    trainer.hooks += step_hooks
    trainer.eval_hooks += step_hooks
    if data.label_noise is not None:
        trainer.train_hits = torch.zeros(len(data.y_train), dtype=torch.bool, device=device)
    run = Run(cfg=cfg, out=out, device=device, speed=speed, model=model, masks=masks, trainer=trainer,
              scheduler=scheduler, pruner=None, tracker=tracker, generators=gens, label_noise=data.label_noise,
              parts=parts)
    _attach_pruning(run, units)
    trainer.hooks.insert(0, _MaskHook(masks))
    if tracker is not None:
        trainer.hooks.insert(0, tracker)
    from gstlab.probes import attach_probes

    attach_probes(run, data)
    for cb, start in zip(parts.callbacks, parts.callback_states):
        cb.load_state_dict(copy.deepcopy(start))
        run.callbacks.append(cb)
    return run


def build_optimizer(cfg: C.OptimConfig, model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """The paper's optimizer; ``fused``: one kernel for the whole update where this torch has one (Adam since 2.0,
    SGD since 2.4), else PyTorch's default."""
    cls = torch.optim.SGD if cfg.name == "sgd" else torch.optim.Adam
    kind = {"fused": True} if fused and "fused" in inspect.signature(cls).parameters else {"foreach": True}
    if cfg.name == "sgd":
        return cls(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kind)
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)


def _tracker(cfg: C.RunConfig, model, units, flow: dataflow.Flow) -> ActivationTracker | None:
    """The activation statistics a criterion that needs them ranks by, each unit's summed on the axis where the
    data-flow trace found its units (``flow``; an untraced model: by layer type)."""
    if not criteria.get(cfg.pruning.criterion).needs_activations or not cfg.pruning.layers:
        return None
    tracked = tracked_units(cfg, units)
    held = {u.name: flow.unit_dims.get(u.activation_module, {}).get(u.module) for u in tracked}
    dims = {name: dim for name, dim in held.items() if dim is not None}  # None: refused by check_activations
    return ActivationTracker(model, tracked, cfg.pruning.activation_every, cfg.pruning.activation_momentum, dims)


def tracked_units(cfg: C.RunConfig, units) -> list:
    """The units the schedule prunes (whose activations the ``activation`` criterion records)."""
    chosen = {s.name for s in cfg.pruning.layers}
    return [u for u in units if u.name in chosen]


def _attach_pruning(run: Run, units) -> None:
    cfg = run.cfg
    if not cfg.pruning.layers:
        return
    if cfg.intervention.kind != "none":
        from gstlab.interventions import attach_intervention

        attach_intervention(run, units)
        return

    def prune(unit, indices: torch.Tensor) -> None:
        run.masks.prune(unit.name, indices, run.trainer.optimizer)

    run.pruner = Pruner(run.model, units, cfg.pruning, run.generators["prune"], prune, "prune", run.tracker)


class _MaskHook:
    """Re-apply the masks after every optimizer step so pruned entries stay exactly zero."""

    def __init__(self, masks: UnitMasks) -> None:
        self.masks = masks

    def before_batch(self) -> None:
        pass

    def after_step(self) -> None:
        self.masks.apply_()


# --------------------------------------------------------------------------------------------- checkpoints


def checkpoint_state(run: Run, next_epoch: int) -> dict:
    state = {
        "format": store.CHECKPOINT_FORMAT,
        "run_id": C.run_id(run.cfg),
        "config": C.to_dict(run.cfg),
        "epoch": next_epoch,
        "model": run.model.state_dict(),
        "buffers": unsaved_buffers(run.model),
        "optimizer": run.trainer.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generators": {k: g.get_state() for k, g in run.generators.items()},
        "global_rng": _global_rng(run.device),  # what a model's own dropout draws from
        "rows": run.rows,
        "callbacks": [{"type": (name := callback_name(cb)), "state": plain(cb.state_dict(), name)}
                      for cb in run.callbacks],
    }
    if run.pruner is not None:
        state["pruner"] = run.pruner.state_dict()
    if run.tracker is not None:
        state["tracker"] = run.tracker.state_dict()
    if run.intervention is not None:
        state["intervention"] = run.intervention.state_dict()
    return state


def restore(run: Run, state: dict) -> None:
    run.model.load_state_dict(state["model"])
    load_unsaved_buffers(run.model, state.get("buffers", {}))
    run.masks.refresh()
    run.trainer.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    for k, g in run.generators.items():
        g.set_state(state["generators"][k])
    if "global_rng" in state:  # absent from checkpoints written before 2026-12-06
        _set_global_rng(run.device, state["global_rng"])
    run.rows = state["rows"]
    for cb, saved in zip(run.callbacks, state["callbacks"]):
        cb.load_state_dict(saved["state"] if "type" in saved else saved)  # a bare state: before 2026-12-06
    if run.pruner is not None:
        run.pruner.load_state_dict(state["pruner"])
    if run.tracker is not None:
        run.tracker.load_state_dict(state["tracker"])
    if run.intervention is not None:
        run.intervention.load_state_dict(state["intervention"])
    run.start_epoch = int(state["epoch"])


def _global_rng(device: torch.device) -> dict:
    """torch's global random state (CPU, and the run's GPU): a user model's dropout draws from it, so a resumed
    run continues its stream instead of the one ``prepare`` seeded."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_global_rng(device: torch.device, state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------------ the loop


def _run_callbacks(run: Run, epoch: int, events: list[PruningEvent]) -> None:
    """The epoch callbacks, which observe: they are not part of the run id, so one that changed the model's
    parameters or buffers, or pruned (the pruner would not know: its events, counts and later choices), is refused,
    and torch's global random state is put back after them (a user model's dropout draws from it). A callback
    raising ``EndRun`` sets ``run.ended`` (the callbacks after it do not run this epoch)."""
    if not run.callbacks:
        return
    pruned = run.masks.total_pruned()
    before = _observed(run)
    rng = _global_rng(run.device)
    try:
        for cb in run.callbacks:
            cb.after_epoch(run.view(), epoch, events)
            _refuse_changes(run, cb, epoch, pruned, before)
    except EndRun as stop:
        _refuse_changes(run, cb, epoch, pruned, before)
        run.ended = f"epoch callback {type(cb).__name__} ended the run after epoch {epoch}: {stop}"
    _set_global_rng(run.device, rng)


def _observed(run: Run, keep: bool = True) -> dict:
    return observed(run.model, None if run.tracker is None else run.tracker.state_dict(), keep)


def _refuse_changes(run: Run, cb: EpochCallback, epoch: int, pruned: int, before: dict) -> None:
    """ConfigError naming ``cb`` when the masks or anything else ``callbacks.observed`` holds differ from
    ``before``."""
    name = type(cb).__name__
    if run.masks.total_pruned() != pruned:
        raise ConfigError(f"epoch callback {name} changed run.masks in epoch {epoch}; a callback may "
                          f"read the masks, pruning is the schedule's (pruning.layers)")
    changed = first_change(before, _observed(run, keep=False))
    if changed is not None:
        raise ConfigError(f"epoch callback {name} changed {changed} in epoch {epoch}; callbacks observe (they are "
                          "not part of the run id): restore what one changes, e.g. evaluate in eval mode and copy "
                          "perturbed weights back")


def run_epoch(run: Run, epoch: int) -> Pass:
    """Train, evaluate, event, evaluate, callbacks; appends the epoch's rows. Returns the training pass."""
    t0 = time.perf_counter()
    lr = run.trainer.optimizer.param_groups[0]["lr"]
    skip_training = run.scratch and epoch == 0
    train = Pass(acc=0.0, loss=math.nan) if skip_training else run.trainer.train_epoch()
    if diverged(train) and not skip_training:
        return train
    due = run.pruner is not None and run.pruner.due(epoch)
    pre = run.trainer.evaluate(predictions=due)  # predictions on event epochs only: class detail
    events: list[PruningEvent] = []
    if due:
        events = run.pruner.step(epoch)
    post = _after_events(run, events, pre)
    _run_callbacks(run, epoch, events)
    if not skip_training:
        run.scheduler.step()  # the official code does not step the scheduler in the scratch epoch
    run.rows["events"].extend(ev.row() for ev in events)
    row = {
        "epoch": epoch, "lr": lr, "train_acc": train.acc, "train_loss": train.loss,
        "test_acc_pre": pre.acc, "test_acc": post.acc, "test_loss": post.loss,
        "units_pruned": run.masks.total_pruned(), "units_removed": sum(ev.units_removed for ev in events),
    }
    if run.label_noise is not None:
        row.update(dict.fromkeys(NOISE_COLUMNS, math.nan) if skip_training
                   else run.label_noise.split(run.trainer.train_hits))
    run.rows["metrics"].append({**row, "wall_s": time.perf_counter() - t0})
    return train


def _after_events(run: Run, events: list[PruningEvent], pre: Pass) -> Pass:
    """Post-event evaluation; events get acc_before/acc_after. Without events nothing changed: reuse ``pre``.

    For a non-permanent intervention the event's ``acc_after`` is that of the perturbed model, while the
    epoch's ``test_acc`` is the model as training left it (see ``gstlab.interventions``).
    """
    if not events:
        return pre
    post = run.trainer.evaluate(predictions=True)
    compat = run.cfg.intervention.count_eval_batches
    after = (run.intervention.measure_after({ev.layer for ev in events}) if run.intervention is not None
             and not compat else post)
    for ev in events:
        ev.acc_before, ev.acc_after = pre.acc, after.acc
    run.rows.setdefault("classes", []).extend(event_rows(events, run.trainer.eval_data[1], pre.pred, after.pred))
    return post


def metric_columns(run: Run) -> tuple[str, ...]:
    """metrics.csv's columns: the standard ones, with the clean/noisy training accuracy under label noise."""
    return store.metric_columns(() if run.label_noise is None else NOISE_COLUMNS)


def write_tables(run: Run) -> None:
    store.write_csv(run.out / "metrics.csv", run.rows["metrics"], metric_columns(run))
    store.write_csv(run.out / "events.csv", run.rows["events"], store.EVENT_COLUMNS)
    store.write_csv(run.out / "events_classes.csv", run.rows.get("classes", []), CLASS_COLUMNS)
    for cb in run.callbacks:
        cb.write(run.view())


def _summary(run: Run, status: str, reason: str | None = None) -> dict:
    total, remaining = run.masks.parameter_counts()
    summary = {"status": status, "run_id": C.run_id(run.cfg)}
    summary.update(summarize(run.rows["metrics"], run.rows["events"], run.scratch))
    summary.update(summarize_classes(run.rows.get("classes", []), run.rows["events"], run.scratch))
    summary.update({
        "params_total": total, "params_remaining": remaining,
        "params_zero": int(sum((p == 0).sum() for p in run.model.parameters())),
    })
    if reason:
        summary["failure"] = reason
    return summary


# ------------------------------------------------------------------------------------------------- execute


def execute(cfg: C.RunConfig, out: str | Path, progress: bool | None = None, parts: Parts = DEFAULT_PARTS) -> dict:
    """Run, resume or skip the run ``cfg`` in directory ``out``; returns its summary. ``parts``: see
    :class:`gstlab.parts.Parts` (``gstlab.api.run`` fills it with a user's model and data)."""
    return run_or_skip(cfg, out, progress, parts)[0]


def run_or_skip(cfg: C.RunConfig, out: str | Path, progress: bool | None = None,
                parts: Parts = DEFAULT_PARTS) -> tuple[dict, bool]:
    """(summary, executed): ``executed`` is False when ``out`` already held the finished (or failed) run.

    Damaged files are repaired on the way (docs/reliability.md): a damaged config.yaml is rewritten, damaged
    results of a finished run are redone, a damaged checkpoint falls back to the previous one or to scratch.
    """
    out = Path(out)
    done = _settled_summary(cfg, out)  # the common case, without loading data or taking the lock
    if done is not None:
        _warn_unkept(cfg, out, int(done.get("epochs_done") or 0), "holds this run, ended")
        return done, False
    if portable.requested():  # PortableError where torch was imported first: the run would not be portable
        portable.pin()
    with run_threads(cfg.train):
        return _prepare_and_execute(cfg, out, progress, parts)


@contextlib.contextmanager
def run_threads(train: C.TrainConfig) -> Iterator[None]:
    """torch's CPU threads for one run (``train.threads``; one in portable mode; null: as the process has them),
    restored afterwards, so a run in a notebook or a sweep's in-process worker leaves the process as it found it:
    a later run with ``threads: null`` must not inherit an earlier run's count (float reductions depend on it)."""
    before = torch.get_num_threads()
    if train.threads or portable.requested():
        torch.set_num_threads(1 if portable.requested() else train.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prepare_and_execute(cfg: C.RunConfig, out: Path, progress: bool | None, parts: Parts) -> tuple[dict, bool]:
    run = prepare(cfg, out, parts)  # bad input fails here, before anything is written
    for line in preflight.idle_layers(cfg, run.model, list(run.masks.units.values())):  # a run that trains
        warn(line)
    if cfg.train.tensorboard:
        sinks.require_tensorboard()
    store.make_dir(out, OUT_NAME.get())
    with store.dir_lock(out):  # another process (a second study sharing this run) may hold it
        summary, problem, notes = _settle(cfg, out)
        if summary is not None:
            _warn_unkept(cfg, out, int(summary.get("epochs_done") or 0), "holds this run, ended")
            return summary, False
        if problem is not None:
            warn(f"{out}/{problem}; running it again")
            notes.append(recovery.note(problem.split()[0], problem, "ran the run again"))
            recovery.discard_summary(out)
        return _execute(run, progress, notes), True


def settle_ended(cfg: C.RunConfig, out: Path) -> None:
    """Bring the directory of an ended run to its final state as running it again would (a sweep does not run
    an ended run again): config.yaml repaired, the manifest's status and checksums, no checkpoint left. Its
    files are verified again under the run's lock (another process may have changed them)."""
    with store.dir_lock(out):
        _settle(cfg, out)


def _settle(cfg: C.RunConfig, out: Path) -> tuple[dict | None, str | None, list[dict]]:
    """(summary, problem, notes) of ``recovery.verify_finished``, an ended run settled; ``notes``: the repairs."""
    notes = _repair_config(cfg, out)
    summary, problem = recovery.verify_finished(out)
    if summary is not None:
        recovery.settle(out, summary, notes)
    return summary, problem, notes


def _execute(run: Run, progress: bool | None, notes: list[dict]) -> dict:
    cfg, out = run.cfg, run.out
    show = cfg.train.progress if progress is None else progress
    for path in store.leftovers(out):  # half-written files of a killed write
        path.unlink()
    run = _resume(run, notes)
    _warn_unkept(cfg, out, run.start_epoch, f"resumes this run after epoch {run.start_epoch - 1}")
    store.atomic_write_text(out / "config.yaml", C.dump_yaml(cfg))
    previous = store.read_json_or_none(out / "manifest.json") or {}
    info = manifest(cfg, run.device, run.speed, stream_seeds(cfg.seed))
    if run.start_epoch:
        info["resumed_at_epoch"] = run.start_epoch  # the run was cut off; its last resume started here
        _record_other_machines(info, previous, run.start_epoch, out)
    recovered = [*recovery.previous_notes(previous), *notes]
    if recovered:
        info["recovered"] = recovered
    store.write_json(out / "manifest.json", info)
    if run.label_noise is not None:
        store.write_csv(out / LABEL_NOISE_FILE, run.label_noise.rows(), LABEL_COLUMNS)
    run.sinks = sinks.open_sinks(cfg, out, run.start_epoch)
    status, reason = _loop(run, show)
    write_tables(run)
    summary = _summary(run, status, reason)
    for sink in run.sinks:
        sink.close(summary)
    _save_final(run, status)
    store.write_json(out / "summary.json", summary)
    recovery.remove_transient(out)  # a final run keeps no checkpoint (finished or diverged)
    info.update({"status": status, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "files": recovery.checksums(out)})
    store.write_json(out / "manifest.json", info)
    return summary


def _record_other_machines(info: dict, previous: dict, start_epoch: int, out: Path) -> None:
    """A run resumed on another machine, kernels or torch than computed its earlier epochs keeps those in its
    manifest (``earlier_machines``; reports name them) and says so: its numbers are no one machine's."""
    earlier = earlier_machines(previous, info, start_epoch)
    if earlier:
        info["earlier_machines"] = earlier
    if len(earlier) > len(recorded_stretches(previous)):  # a stretch ended now: other kernels than it stopped on
        last = earlier[-1]
        warn(f"{out}: resumes at epoch {start_epoch} on {machine_text(info)}; epochs {last['epochs'][0]}-"
             f"{start_epoch - 1} ran on {machine_text(last)}. Its numbers are no single machine's (bits "
             f"reproduce only on one kind: docs/decisions.md, \"Where results reproduce\"); recorded in "
             f"manifest.json as earlier_machines")


def _resume(run: Run, notes: list[dict]) -> Run:
    """Restore the newest loadable checkpoint of ``run.out``; damaged ones are reported, noted and removed.
    Returns the run to continue (a fresh one when a checkpoint failed half-way through restoring)."""
    problems = []
    for name in (store.CHECKPOINT, store.PREVIOUS_CHECKPOINT):
        path = run.out / name
        if not path.exists():
            continue
        try:
            state, verified = store.load_verified(path)
            if state.get("format") != store.CHECKPOINT_FORMAT or state.get("run_id") != C.run_id(run.cfg):
                raise ValueError("not a checkpoint of this run")
        except Exception as err:  # noqa: BLE001 (a damaged file raises many types)
            _damaged(problems, name, path, err)
            continue
        _check_callbacks(run, state, path)  # the user's error, not the file's: refused, the checkpoint kept
        try:
            restore(run, state)
        except Exception as err:  # noqa: BLE001 (a damaged file raises many types)
            _damaged(problems, name, path, err)
            run = prepare(run.cfg, run.out, run.parts)  # a partial restore leaves the run half-loaded
            continue
        if not verified:  # saved by a gstlab without checkpoint checksums (docs/reliability.md)
            warn(f"{path} has no checksum (saved by an older gstlab); resuming from it unverified")
        if problems:
            _report(run, problems, f"resuming at epoch {run.start_epoch} from {name}", notes)
        return run
    if problems:
        _report(run, problems, "restarting from scratch", notes)
    return run


def _damaged(problems: list[str], name: str, path: Path, err: Exception) -> None:
    """Note checkpoint ``name`` as damaged and set it aside."""
    problems.append(f"{name} is damaged ({one_line(err)})")
    store.discard(path)


def callback_name(cb: object) -> str:
    return f"{type(cb).__module__}.{type(cb).__qualname__}"


def _check_callbacks(run: Run, state: dict, path: Path) -> None:
    """ConfigError when ``state`` was saved with other epoch callbacks than the run has (their states are
    restored in order: another list would hand one callback's state to another, or drop one; one added to a run
    saved without it would see only the epochs after the resume). A checkpoint from before callbacks were saved
    with their types (no ``callbacks`` entry, or bare states) is not judged."""
    entries = state.get("callbacks", [])
    typed = "callbacks" in state and all(isinstance(s, dict) and "type" in s for s in entries)
    saved = [s["type"] for s in entries if isinstance(s, dict) and "type" in s]
    have = [callback_name(cb) for cb in run.callbacks]
    if (typed or saved) and saved != have:
        raise ConfigError(f"callbacks: {path} was saved with the epoch callbacks [{', '.join(saved)}], this run has "
                          f"[{', '.join(have)}]; resume with the same callbacks (probes included), in the same order")


def plain(value, where: str):
    """A callback's state made of what a checkpoint can hold (weights-only loading): numbers, strings, None,
    tensors, and lists, tuples and dicts of them; numpy scalars and arrays become Python numbers and tensors.
    ConfigError naming the callback for anything else (the checkpoint would load as damaged)."""
    if isinstance(value, (bool, int, float, str, type(None), torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, where) for v in value)
    if isinstance(value, dict):
        return {k: plain(v, where) for k, v in value.items()}
    raise ConfigError(f"epoch callback {where}: its state holds a {type(value).__name__}; allowed in a checkpoint: "
                      f"numbers, strings, None, tensors, numpy values, and lists, tuples and dicts of them")


def _report(run: Run, problems: list[str], action: str, notes: list[dict]) -> None:
    warn(f"{run.out}/{'; '.join(problems)}; {action}")
    notes.append(recovery.note(store.CHECKPOINT, "; ".join(problems), action))


def _loop(run: Run, show: bool) -> tuple[str, str | None]:
    cfg = run.cfg
    epochs = range(run.start_epoch, cfg.train.epochs)
    label = cfg.name or C.run_id(cfg)
    show = show and sys.stderr.isatty()  # bars on a terminal only: no carriage returns in logs
    bar = tqdm(epochs, total=cfg.train.epochs, initial=run.start_epoch, desc=label, unit="ep", disable=not show,
               dynamic_ncols=True)
    if show:
        run.trainer.progress = lambda it: tqdm(it, total=len(it), leave=False, unit="batch", disable=not show)
    for epoch in bar:
        train = run_epoch(run, epoch)
        if diverged(train) and not (run.scratch and epoch == 0):
            return "failed", f"diverged at epoch {epoch}: training loss {train.loss}"
        last = run.rows["metrics"][-1]
        for sink in run.sinks:
            sink.epoch(last, [ev for ev in run.rows["events"] if ev["epoch"] == epoch])
        if run.ended is not None:
            return "failed", run.ended
        bar.set_postfix(test=f"{last['test_acc']:.2f}", pruned=last["units_pruned"])
        _checkpoint(run, epoch)
    return "finished", None


def _checkpoint(run: Run, epoch: int) -> None:
    cfg = run.cfg.train
    if epoch in cfg.keep_checkpoints:
        _save_model(run, run.out / f"model_epoch{epoch}.pt", epoch)
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == run.cfg.train.epochs:
        write_tables(run)
        store.save_checkpoint(run.out / store.CHECKPOINT, checkpoint_state(run, epoch + 1),
                              previous=run.out / store.PREVIOUS_CHECKPOINT)


def _save_model(run: Run, path: Path, epoch: int, diverged: bool = False) -> None:
    store.save_checkpoint(path, {"format": store.CHECKPOINT_FORMAT, "kind": "model", "epoch": epoch,
                                 "run_id": C.run_id(run.cfg), "config": C.to_dict(run.cfg),
                                 "model": run.model.state_dict(), "buffers": unsaved_buffers(run.model),
                                 **({"diverged": True} if diverged else {})})


def _save_final(run: Run, status: str) -> None:
    """model_final.pt: the model after the last epoch (for a run a callback ended, the epoch it ended after), or
    for a diverged run the weights training diverged to, labelled with the epoch it diverged in (the one after
    its last metrics row) and ``diverged``."""
    rows = run.rows["metrics"]
    if status == "failed" and run.ended is None:
        _save_model(run, run.out / "model_final.pt", int(rows[-1]["epoch"]) + 1 if rows else run.start_epoch,
                    diverged=True)
    elif rows:
        _save_model(run, run.out / "model_final.pt", int(rows[-1]["epoch"]))


def _warn_unkept(cfg: C.RunConfig, out: Path, upto: int, what: str) -> None:
    """Kept epochs a run directory lacks and will not get: ``train.keep_checkpoints`` is outside the run id, so
    asking for more on an ended run, or for an epoch before a resume, does not redo those epochs."""
    missing = recovery.unkept_epochs(cfg.train.keep_checkpoints, out, upto)
    if missing:
        warn(f"train.keep_checkpoints: epoch(s) {', '.join(map(str, missing))} asked, but {out} {what}, so their "
             f"model_epochN.pt files are not written (the field is not part of the run id); choose another "
             f"{OUT_NAME.get()} to train it anew with them")


def _settled_summary(cfg: C.RunConfig, out: Path) -> dict | None:
    """The summary of the run in ``out`` if it is final, intact and settled (nothing to repair or tidy);
    RunDirError if ``out`` holds another run."""
    if _identity_problem(cfg, out) is not None or not (out / "config.yaml").is_file():
        return None
    summary, _ = recovery.verify_finished(out, run_id=C.run_id(cfg))
    return summary if summary is not None and recovery.settled(out, summary) else None


def _identity_problem(cfg: C.RunConfig, out: Path) -> str | None:
    """None when ``out`` is new or its config.yaml is this run's; a problem when config.yaml is damaged but
    manifest.json or summary.json say this run; RunDirError when ``out`` holds another run or nothing tells."""
    path = out / "config.yaml"
    want = C.run_id(cfg)
    if not path.exists():
        return "config.yaml is missing" if want in recovery.recorded_ids(out) else None
    try:
        have, problem = C.run_id(C.from_dict(C.RunConfig, C.load_yaml(path))), None
    except (C.ConfigError, TypeError) as err:
        have, problem = None, f"config.yaml is damaged ({one_line(err, 80)})"
    recorded = recovery.recorded_ids(out)
    if have == want and recorded and want not in recorded:  # config.yaml hashes anew under a result revision
        raise RunDirError(f"{out} holds run {recorded[0]}: this config's id is now {want} (a result revision, "
                          f"docs/decisions.md#run-ids-and-result-revisions: its results were computed before a "
                          f"fix); choose another {OUT_NAME.get()} to compute it anew")
    if have == want:
        return None
    if want in recorded:
        return problem or f"config.yaml is damaged (it describes run {have}, manifest.json says {want})"
    if have is not None or recorded:
        raise RunDirError(f"{out} holds a different run (id {have or recorded[0]}, this config is {want}); "
                          f"choose another {OUT_NAME.get()}")
    raise RunDirError(f"{out}/{problem} and no other file says which run it holds: remove the directory "
                      f"(rm -r {out}) to run here, or choose another {OUT_NAME.get()}")


def _repair_config(cfg: C.RunConfig, out: Path) -> list[dict]:
    """Rewrite a damaged config.yaml of this run; returns the repair notes."""
    problem = _identity_problem(cfg, out)
    if problem is None:
        return []
    warn(f"{out}/{problem}; rewriting it from this run's config")
    store.atomic_write_text(out / "config.yaml", C.dump_yaml(cfg))
    return [recovery.note("config.yaml", problem, "rewritten from the config of this run")]
