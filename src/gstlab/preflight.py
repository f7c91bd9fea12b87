"""Checks that need the model or the data's sizes: the model's size (built on the meta device, so nothing is
allocated), the training data against the batch size, and whether enough parameters survive for the Hessian
probes (where its pruned layers' outputs go: ``gstlab.dataflow``). They run in ``runner.prepare``, before the
run directory is created, and raise ConfigError (exit 2)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from gstlab import config as C
from gstlab import probes
from gstlab.data import BUILT_IN, check_image_size, check_subsets
from gstlab.dataflow import BATCHNORM
from gstlab.environment import resolve_device
from gstlab.flatness import basis_memory_problem
from gstlab.models import build_model
from gstlab.parts import DEFAULT_PARTS
from gstlab.pruning.schedule import LayerPlan, event_epochs

MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights (12 GB with Adam's moments); the paper's VGG11 has 9 million


def check_model_size(cfg: C.ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    """ConfigError if the model ``cfg`` would have more than MAX_PARAMS parameters (counted without allocating).
    A model given to gstlab.api.run (``cfg.supplied``) is the caller's: not checked."""
    if cfg.supplied:
        return
    model = meta_model(cfg, input_shape, num_classes)
    if model is None:
        return
    total = sum(p.numel() for p in model.parameters())
    if total > MAX_PARAMS:
        raise C.ConfigError(f"model: {total:,} parameters (hidden/channels/width); allowed: at most {MAX_PARAMS:,}")


def meta_model(cfg: C.ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module | None:
    """The model built on the meta device (shapes, no memory); None for an architecture whose constructor needs
    real values (a registered one may call ``.item()``): it is checked when its run builds it."""
    try:
        with torch.device("meta"):
            return build_model(cfg, input_shape, num_classes)
    except C.ConfigError:
        raise
    except Exception:  # noqa: BLE001 (whatever a registered constructor raises on meta tensors)
        return None


def check_threads(cfg: C.TrainConfig) -> None:
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cores:
        raise C.ConfigError(f"train.threads: {cfg.threads} asked but this machine has {cores} CPU cores; "
                            f"allowed: 1..{cores} or null (the process's count)")


def _plans(cfg: C.RunConfig, model: torch.nn.Module, units) -> list[tuple[LayerPlan, torch.nn.Module, object]]:
    """(schedule, layer module, unit) of each scheduled layer, in the config's order."""
    by_name = {u.name: u for u in units}
    out = []
    for layer in cfg.pruning.layers:
        unit = by_name[layer.name]
        module = model.get_submodule(unit.module)
        epochs = tuple(event_epochs(layer.start, layer.end, cfg.pruning.period_of(layer)))
        out.append((LayerPlan(layer.name, int(module.weight.shape[0]), layer.fraction, epochs), module, unit))
    return out


def surviving_parameters(cfg: C.RunConfig, model: torch.nn.Module, units) -> int:
    """Parameters left when every scheduled layer has lost its whole fraction (what the last probe sees)."""
    removed = 0
    for plan, module, unit in _plans(cfg, model, units):
        per_unit = module.weight[0].numel() + (module.bias is not None)
        if unit.bn is not None and cfg.pruning.bn_masking:
            per_unit += 2
        removed += per_unit * sum(plan.removals().values())
    return sum(p.numel() for p in model.parameters()) - removed


def idle_layers(cfg: C.RunConfig, model: torch.nn.Module, units) -> list[str]:
    """A warning line for each scheduled layer whose fraction removes no unit: ceil((1 - fraction) x n) keeps
    all n (fraction 0 has its own warning, gstlab.surprises)."""
    return [f"pruning.layers[{i}].fraction: {plan.fraction} of {plan.name}'s {plan.n_units} units removes none "
            f"(ceil((1 - fraction) x {plan.n_units}) keeps all), so {plan.name} is never pruned"
            for i, (plan, _, _) in enumerate(_plans(cfg, model, units)) if plan.fraction > 0 and not plan.removals()]


def check_noise_scale(cfg: C.RunConfig, model: torch.nn.Module, units) -> None:
    """ConfigError when Gaussian noise takes the paper's sigma (the std of a never-targeted unit's weights) on a
    layer whose units have one weight each: the std of one number is undefined (NaN), and the run had failed at
    its first event as a training divergence."""
    if cfg.intervention.kind != "gaussian" or cfg.intervention.scale is not None:
        return
    for i, (plan, module, _) in enumerate(_plans(cfg, model, units)):
        if module.weight[0].numel() < 2 and plan.removals():  # a layer that loses no unit gets no noise
            raise C.ConfigError(f"intervention.scale: null takes sigma as the std of a never-targeted unit's weights, "
                                f"and each unit of {plan.name!r} (pruning.layers[{i}]) has one weight; allowed: a "
                                f"number (sigma), or layers whose units have two weights or more")


def check_probes(cfg: C.RunConfig, model: torch.nn.Module, units, memory_of: torch.device | None) -> None:
    """ConfigError when ``probes.top_k`` asks for more eigenvalues than parameters survive the schedule, or
    when the Lanczos basis of the unpruned model would not fit in the memory of ``memory_of`` (None: not
    checked; ``basis_problem``): refused before training, not after the epochs leading to the first probe."""
    p = cfg.probes
    if not probes.scheduled(cfg):
        return
    left = surviving_parameters(cfg, model, units)
    if p.top_k > left:
        raise C.ConfigError(f"probes.top_k: {p.top_k} eigenvalues asked, but only {left:,} parameters survive "
                            f"the pruning schedule; allowed: at most {left:,}")
    if memory_of is not None and (problem := basis_problem(cfg, model, memory_of)):
        raise C.ConfigError(problem)


def basis_problem(cfg: C.RunConfig, model: torch.nn.Module, device: torch.device) -> str | None:
    """Why the Lanczos basis of the unpruned model (the largest a probe of the run can need) would not fit in
    ``device``'s memory; None when it fits or the run does not probe."""
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    if not probes.scheduled(cfg) or not trainable:
        return None
    return basis_memory_problem(trainable, cfg.probes, device)


def _this_device(train: C.TrainConfig) -> tuple[torch.device | None, str | None]:
    """(the run's device on this machine, None), or (None, why this machine lacks it)."""
    try:
        return resolve_device(train.device), None
    except C.ConfigError as err:
        return None, str(err)


def data_shape(cfg: C.DataConfig) -> tuple[tuple[int, ...], int] | None:
    """(input shape, classes) a data config yields, without loading the data; None for a data set registered
    elsewhere (gstlab.registry), whose run is checked when it starts."""
    if cfg.name == "synthetic":
        shape, classes = tuple(cfg.synthetic_shape), cfg.synthetic_classes
    elif cfg.name in BUILT_IN:
        shape, classes = BUILT_IN[cfg.name].shape, BUILT_IN[cfg.name].classes
    else:
        return None
    if cfg.image_size is not None and len(shape) == 3:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    return shape, classes


def data_sizes(cfg: C.DataConfig) -> tuple[int, int]:
    """(training, test) examples a run uses: its subsets, else the data set's split sizes (0: a data set
    registered elsewhere, unknown without loading it)."""
    if cfg.name == "synthetic":
        full = (cfg.synthetic_train, cfg.synthetic_test)
    else:
        full = (BUILT_IN[cfg.name].train, BUILT_IN[cfg.name].test) if cfg.name in BUILT_IN else (0, 0)
    return cfg.train_subset or full[0], cfg.test_subset or full[1]


def check_training_data(cfg: C.RunConfig, n_train: int, input_shape: tuple[int, ...],
                        model: torch.nn.Module | None) -> None:
    """ConfigError for training data the run could not use as asked: augmentation of inputs that are not
    images, label noise that rounds to no label, and a last batch of one example under BatchNorm (which cannot
    train on it; dropping it would leave an example unseen each epoch). ``model``: None when not known yet."""
    d, batch = cfg.data, cfg.train.batch_size
    if d.augment and len(input_shape) != 3:
        source = "the data given to gstlab.api.run" if d.supplied else d.name
        raise C.ConfigError(f"data.augment: random crops and flips need images (C, H, W); {source} has inputs of "
                            f"shape {tuple(input_shape)}; allowed: false")
    if d.label_noise > 0 and round(d.label_noise * n_train) == 0:
        raise C.ConfigError(f"data.label_noise: {d.label_noise:g} of {n_train:,} training examples rounds to no "
                            f"noisy label (Python's round: half to even); allowed: 0, or above {0.5 / n_train:.3g} "
                            f"(p x N above one half)")
    if n_train % batch == 1 and model is not None and any(isinstance(m, BATCHNORM) for m in model.modules()):
        raise C.ConfigError(f"train.batch_size: {batch} leaves a last batch of 1 of the {n_train:,} training "
                            f"examples, on which the model's BatchNorm cannot train; allowed: a batch size (or "
                            f"data.train_subset) that does not leave one example over")


def check_activation_start(cfg: C.RunConfig, batches_per_epoch: int) -> None:
    """ConfigError when the activation criterion's first event comes before the tracker's first update (the
    ``activation_every``-th training batch): it would have no score to rank by."""
    p = cfg.pruning
    firsts = [(epochs[0], layer.name) for layer in p.layers
              if (epochs := event_epochs(layer.start, layer.end, p.period_of(layer)))]
    if not firsts:
        return
    epoch, name = min(firsts)
    trained = (epoch + 1 - int(p.scratch)) * batches_per_epoch  # a scratch run does not train in epoch 0
    if trained < p.activation_every:
        allowed = f"at most {trained}, or a later start for that layer" if trained else \
            "a criterion without activations (no batch is trained before it)"
        raise C.ConfigError(f"pruning.activation_every: {p.activation_every} training batches before the first "
                            f"activation score, but the first event (layer {name!r}, epoch {epoch}) comes after "
                            f"{trained}; allowed: {allowed}")


def check_sizes(d: C.DataConfig) -> None:
    """What load_data would refuse, for a data set whose sizes and shape are known without loading it."""
    known = data_shape(C.replace(d, image_size=None))
    if known is None:  # a data set registered elsewhere: checked when its run loads it
        return
    check_subsets(d, *data_sizes(C.replace(d, train_subset=None, test_subset=None)))
    if d.image_size is not None:
        check_image_size(d.image_size, known[0])


def check_study(runs: list, ended: Callable[[str], bool] | None = None) -> list[str]:
    """Before a sweep writes anything: every run's model size, the layers its schedule names and its probes (each
    distinct data + model pair is built once, on the meta device). ``ended``: given where the runs run on this
    machine (a local sweep), whether a run id has ended: a run that has not must find its ``train.device`` here
    and, on a CPU, memory for its Lanczos basis (an ended run is not judged by the machine it is swept from again;
    asked only of a run this machine would refuse, since it verifies the run's files). ``runs``: StudyRuns;
    ConfigError names the setting. Returns the warnings of scheduled layers that no event prunes
    (``idle_layers``), one per layer and fraction, naming the settings it holds for."""
    def refuse_here(problem: str | None, run_id: str) -> None:
        if problem and ended is not None and not ended(run_id):
            raise C.ConfigError(problem)

    idle: dict[str, list[str]] = {}
    seen: dict[tuple, torch.nn.Module | None] = {}
    for run in runs:
        cfg = run.cfg
        try:
            device, problem = _this_device(cfg.train) if ended is not None else (None, None)
            refuse_here(problem, run.run_id)
            known = data_shape(cfg.data)
            if known is None or cfg.model.supplied:
                continue
            check_sizes(cfg.data)
            key = (cfg.data, cfg.model)
            if key not in seen:
                check_model_size(cfg.model, *known)
                seen[key] = meta_model(cfg.model, *known)
            check_training_data(cfg, data_sizes(cfg.data)[0], known[0], seen[key])
            if seen[key] is None:
                continue
            units = DEFAULT_PARTS.units_of(cfg, seen[key])
            C.validate(cfg, [u.name for u in units])  # as the run finds them
            check_probes(cfg, seen[key], units, None)
            # a GPU's memory is read in the run: asking here would hold a CUDA context in the sweep's process
            if device is not None and device.type == "cpu":
                refuse_here(basis_problem(cfg, seen[key], device), run.run_id)
            for line in idle_layers(cfg, seen[key], units):
                idle.setdefault(line, []).append(run.setting)
        except C.ConfigError as err:
            raise C.ConfigError(f"setting {run.setting!r}: {err}") from None
    return [f"{line} (setting{'s' if len(set(s)) > 1 else ''} {', '.join(map(repr, dict.fromkeys(s)))})"
            for line, s in idle.items()]
