"""The Python API: one call runs a config, on the zoo and a registered data set or on your own model and data.

    from gstlab import api

    summary = api.run({"train": {"epochs": 12}, "pruning": {...}}, "runs/mine",
                      model=MyNet(), data=(x_train, y_train, x_test, y_test))

It is the CLI's path (``gst run``): the same schedule, events, probes, run directory, skip of a finished run
and resume of an interrupted one. What you give replaces the registered piece it stands for
(``gstlab.parts``); the config then records its fingerprint (``model.supplied``, ``data.supplied``), which
enters the run id, so a different model or data set never reuses a run directory. Your objects are not changed:
the run trains a copy of the model; the trained weights are in ``out/model_final.pt`` (``load_model``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gstlab import config as C
from gstlab.callbacks import EpochCallback
from gstlab.data import as_integer
from gstlab.errors import one_line
from gstlab.fingerprints import code_text, model_tree, module_attributes, tensor_bytes
from gstlab.models import load_unsaved_buffers, trained_copy
from gstlab.models.units import PrunableUnit, units_from_names
from gstlab.parts import Parts
from gstlab.pruning.masks import MASK_BUFFER
from gstlab.runner import OUT_NAME, execute
from gstlab.seeding import derive_seed

ModelLike = nn.Module | Callable[[], nn.Module]
Split = Dataset | DataLoader
DataLike = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | tuple[Split, Split]


def run(config: C.RunConfig | dict | str | Path, out: str | Path, *, model: ModelLike | None = None,
        data: DataLike | None = None, classes: int | None = None,
        units: Sequence[str | PrunableUnit] | None = None, callbacks: Sequence[EpochCallback] = (),
        progress: bool | None = None) -> dict:
    """Run, resume or skip the run in directory ``out``; returns its summary (as ``summary.json``).

    - ``config``: a RunConfig, a mapping as in a YAML config, or the path of a YAML config.
    - ``model``: an ``nn.Module`` (trained as a copy, from its current weights) or a function that builds one
      (called after seeding torch with the run's init stream, so ``seed`` varies the initialization as for
      the zoo). None: ``model.arch`` from the zoo.
    - ``data``: ``(x_train, y_train, x_test, y_test)`` tensors (float inputs are used as given, uint8 pixels are
      scaled to [0, 1]; labels are class indices) or ``(train, test)`` datasets or DataLoaders of ``(x, y)``
      pairs, read once in index order (a loader's batching and shuffling are replaced by the config's). None:
      ``data.name`` from the data registry. ``data.train_subset``, ``test_subset``, ``augment``,
      ``image_size`` and ``label_noise`` apply to your data as to a registered set.
    - ``classes``: the number of classes of ``data`` (default: its largest label + 1; give it when the top
      class has no example in the tensors given, e.g. a slice of a larger set).
    - ``units``: the prunable layers (module names, each with the BatchNorm that follows it, or
      ``PrunableUnit`` objects); None: the model's ``prunable_units()`` if it has one, else the modules that
      ``pruning.layers`` names.
    - ``callbacks``: epoch callbacks (:class:`gstlab.callbacks.EpochCallback`): each sees a ``RunView`` after
      every epoch's events, appends rows to the run's tables and writes its files; its ``state_dict`` goes into
      the checkpoints, so a resumed run continues it (resume with the same callbacks, in the same order). They
      observe, and are not part of the run id (a finished run is not run again for a new callback): one that
      leaves the masks, the model's state, a parameter's object or ``requires_grad``, or the activation
      tracker's scores changed is refused (one line naming it and what changed), and torch's global random
      state is put back after them.
    """
    cfg = _config(config)
    _check_out(out)
    if progress is not None and not isinstance(progress, bool):
        raise C.ConfigError(f"progress: {progress!r}; allowed: True, False or None (the config's train.progress)")
    if isinstance(units, (str, PrunableUnit)):
        raise C.ConfigError(f"units: {units!r} is one unit; allowed: a list of module names or PrunableUnit "
                            f"objects, e.g. [{units!r}]")
    if classes is not None and data is None:
        raise C.ConfigError("classes: give it with data=...; a registered data set knows its classes")
    if units is not None and model is None:
        raise C.ConfigError("units: give them with model=...; a zoo model declares its own prunable units")
    if units is not None:
        units = list(units)  # a generator would be used up by the first look (the run id's fingerprint)
    parts = Parts(units=None if units is None else _units_of(units), **_callbacks(callbacks))
    if model is not None:
        builder, fingerprint = _supplied_model(model, cfg, parts)
        parts = dataclasses.replace(parts, model=builder)
        cfg = C.replace(cfg, model=C.replace(cfg.model, supplied=fingerprint))
    if data is not None:
        source, fingerprint = _supplied_data(data, classes)
        parts = dataclasses.replace(parts, data=source)
        cfg = C.replace(cfg, data=C.replace(cfg.data, supplied=fingerprint))
    token = OUT_NAME.set("out")  # messages name the directory by this function's argument, not the CLI's --out
    try:
        return execute(C.check_intent(C.validate(cfg)), out, progress, parts)
    finally:
        OUT_NAME.reset(token)


def load_model(out: str | Path, model: ModelLike | None = None, epoch: int | None = None) -> nn.Module:
    """The trained weights of run directory ``out`` (``model_final.pt``, or ``model_epoch{E}.pt`` kept with
    ``train.keep_checkpoints``), checked against their checksum and loaded into ``model`` (an instance of the
    architecture the run trained, or a function that builds one; None: the registered architecture the run's
    config names, built anew, for a run of gstlab's own model); returns that model. Pruned units are exact
    zeros in the saved weights, and each pruned layer gets the run's ``unit_mask`` buffer (1 alive, 0 pruned),
    so the model computes what the run's did. ConfigError (one line) when the weights do not fit it, or when
    it is of another class (by name) than the run trained: a model given to :func:`run` (``model.supplied``) or
    gstlab's own architecture (``model.arch``);
    ``gstlab.remeasure.CheckpointError`` when the file is missing or damaged."""
    from gstlab.remeasure import load_model_checkpoint  # noqa: PLC0415

    saved = load_model_checkpoint(Path(out), epoch)
    weights = saved["model"]
    trained = _supplied_class(saved)
    if model is None:
        instance = _registered_model(saved, out, trained)
    else:
        instance = model if isinstance(model, nn.Module) else _built(model)
    if not isinstance(instance, nn.Module):
        raise C.ConfigError(f"model: {type(instance).__name__}; allowed: an nn.Module or a function building one")
    expected, field = (trained, "model.supplied") if trained else _registered_class(saved)
    if expected and type(instance).__name__ != expected:  # weights that fit another class compute something else
        raise C.ConfigError(f"model: a {type(instance).__name__}; the run in {out} trained a {expected} "
                            f"({field}); allowed: a {expected}")
    for path, layer in instance.named_modules():  # the run's masks replace any the model carries
        key = f"{path}.{MASK_BUFFER}" if path else MASK_BUFFER
        if key in weights:
            layer.register_buffer(MASK_BUFFER, torch.ones_like(weights[key]))
        elif MASK_BUFFER in layer._buffers:
            del layer._buffers[MASK_BUFFER]
    try:
        instance.load_state_dict(weights)
    except RuntimeError as err:
        raise C.ConfigError(f"model: the weights of {out} do not fit a {type(instance).__name__} "
                            f"({one_line(err, 300)}); allowed: the architecture the run trained") from None
    load_unsaved_buffers(instance, saved.get("buffers", {}))
    return instance


def _supplied_class(saved: dict) -> str:
    """The class name in a saved run's ``model.supplied`` (``model_fingerprint``'s ``Class:hex``); "" for a run
    of a registered architecture."""
    return str(((saved.get("config") or {}).get("model") or {}).get("supplied") or "").split(":")[0]


def _model_and_data(saved: dict) -> tuple[C.ModelConfig, C.DataConfig]:
    """The model and data sections of a saved run's config, parsed alone (another section may name a plugin's
    criterion that is registered no more); ConfigError when they name an entry that is not registered now."""
    raw = saved.get("config") or {}
    return (C.from_dict(C.ModelConfig, raw.get("model") or {}, "model"),
            C.from_dict(C.DataConfig, raw.get("data") or {}, "data"))


def _registered_class(saved: dict) -> tuple[str, str]:
    """(class name, the config field naming it) of gstlab's own architecture a saved run trained, built on the
    meta device (no memory, no random draws); ("", "") for an architecture registered elsewhere (its builder may
    do anything; registered or not now), or data of unknown shape: the weights' fit is then the only check."""
    from gstlab.models import build_model  # noqa: PLC0415
    from gstlab.preflight import data_shape  # noqa: PLC0415
    from gstlab.registry import architectures  # noqa: PLC0415

    try:
        model, data = _model_and_data(saved)
    except C.ConfigError:
        return "", ""
    shape = data_shape(data)
    if shape is None or not architectures.shipped(model.arch):
        return "", ""
    with torch.device("meta"):
        return type(build_model(model, *shape)).__name__, f"model.arch {model.arch!r}"


def _registered_model(saved: dict, out: str | Path, supplied: str) -> nn.Module:
    """The architecture a saved run's config names, built for its data's shape without touching torch's random
    state; ConfigError when the run trained a model given to :func:`run` (class ``supplied``), an architecture
    not registered now, or on data of unknown shape."""
    from gstlab.models import build_model  # noqa: PLC0415
    from gstlab.preflight import data_shape  # noqa: PLC0415

    if supplied:
        raise C.ConfigError(f"model: none given; the run in {out} trained a {supplied} given to gstlab.api.run "
                            f"(model.supplied); allowed: that model, e.g. load_model(out, {supplied})")
    model, data = _model_and_data(saved)
    shape = data_shape(data)
    if shape is None:
        raise C.ConfigError(f"model: none given; the run in {out} trained on data set {data.name!r}, "
                            f"registered elsewhere, whose input shape gstlab cannot know unloaded; allowed: the "
                            f"model, built as the run built it")
    with torch.random.fork_rng(devices=[]):
        return build_model(model, *shape)


def _callbacks(callbacks: Sequence[EpochCallback]) -> dict:
    """Parts' callbacks and their states as given (a run that restarts from scratch resets them to these)."""
    if not isinstance(callbacks, (list, tuple)):
        raise C.ConfigError(f"callbacks: a {type(callbacks).__name__}; allowed: a list of epoch callbacks")
    for i, cb in enumerate(callbacks):
        missing = [m for m in ("after_epoch", "write", "state_dict", "load_state_dict")
                   if not callable(getattr(cb, m, None))]
        if missing or isinstance(cb, type):
            what = "a class (give an instance)" if isinstance(cb, type) else f"without {', '.join(missing)}"
            raise C.ConfigError(f"callbacks[{i}]: {type(cb).__name__} {what}; allowed: objects following "
                                f"gstlab.callbacks.EpochCallback")
    return {"callbacks": tuple(callbacks), "callback_states": tuple(copy.deepcopy(cb.state_dict()) for cb in callbacks)}


def _config(config: C.RunConfig | dict | str | Path) -> C.RunConfig:
    if isinstance(config, C.RunConfig):
        return C.validate(config)
    if not isinstance(config, (dict, str, os.PathLike)):
        raise C.ConfigError(f"config: got {type(config).__name__}; allowed: a RunConfig, a mapping as in a YAML "
                            f"config, or the path of a YAML config")
    if isinstance(config, dict):
        C.refuse_empty(config, "config")
    return C.parse(config if isinstance(config, dict) else C.load_yaml(config))


def _check_out(out: str | Path) -> None:
    """ConfigError for an ``out`` that is not a directory path: an empty one would be the working directory."""
    if not isinstance(out, (str, os.PathLike)):
        raise C.ConfigError(f"out: got {type(out).__name__}; allowed: a directory path (str or pathlib.Path)")
    if not str(out).strip():
        raise C.ConfigError("out: empty (the working directory); allowed: a directory for the run's files")
    if "\0" in str(out):
        raise C.ConfigError(f"out: {str(out)!r} holds a NUL byte, which no directory name can; allowed: a path "
                            f"without it")


# ------------------------------------------------------------------------------------------------- model


def _units_of(units: Sequence[str | PrunableUnit]) -> Callable[[nn.Module], list[PrunableUnit]]:
    def of(model: nn.Module) -> list[PrunableUnit]:
        out = []
        for i, u in enumerate(units):
            try:
                out += [u] if isinstance(u, PrunableUnit) else units_from_names(model, [u])
            except ValueError as err:
                raise C.ConfigError(f"units[{i}]: {err}") from None
        return out

    return of


def _supplied_model(model: ModelLike, cfg: C.RunConfig, parts: Parts):
    """(builder shaped as a registered architecture, fingerprint) of the user's model or model function."""
    if isinstance(model, nn.Module):
        initial = trained_copy(model, "model")
    elif callable(model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "init"))  # as runner.prepare seeds it before building
            initial = _built(model)
        if not isinstance(initial, nn.Module):
            raise C.ConfigError(f"model: the model function returned a {type(initial).__name__}, not an nn.Module")
    else:
        raise C.ConfigError(f"model: expected an nn.Module or a function that builds one, got {type(model).__name__}")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in initial.parameters()):
        raise C.ConfigError("model: has uninitialized (lazy) parameters; allowed: a model whose parameters exist "
                            "(pass one batch through it first)")
    fingerprint = model_fingerprint(initial, parts.units_of(cfg, initial))

    def build(model_cfg: C.ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return copy.deepcopy(initial)

    return build, fingerprint


def _built(model: Callable[[], nn.Module]):
    """``model()``; a class whose constructor needs arguments (``model=nn.Linear``) is one line, not a
    traceback (a function's own errors are the caller's and propagate)."""
    if not isinstance(model, type):
        return model()
    try:
        return model()
    except TypeError as err:
        raise C.ConfigError(f"model: {model.__name__} is a class and {model.__name__}() fails ({one_line(err)}); "
                            f"allowed: an nn.Module instance, or a function that builds one") from None


def model_fingerprint(model: nn.Module, units: list[PrunableUnit]) -> str:
    """``Class:hex``: a hash of the module tree (repr), the code of its module classes (``fingerprints.code_text``),
    every module's own attributes (``self.scale = 100.0``: the repr does not show them; a module held outside the
    tree, in a plain list, in full), every state entry's name, shape, dtype and value, which parameters train
    (``requires_grad``), and the prunable units."""
    h = hashlib.sha256(repr(model).encode())
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        h.update(code_text(cls).encode())
    with model_tree(model):
        for name, module in model.named_modules():
            h.update(f"{name}:{module_attributes(module)}".encode())
    for name, value in model.state_dict().items():
        _update(h, name, value)
    h.update(repr([(n, p.requires_grad) for n, p in model.named_parameters()]).encode())
    h.update(repr(units).encode())
    return f"{type(model).__name__}:{h.hexdigest()[:16]}"


def _update(h: hashlib._Hash, name: str, t: torch.Tensor) -> None:
    h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:".encode())
    h.update(tensor_bytes(t))


# -------------------------------------------------------------------------------------------------- data


def _supplied_data(data: DataLike, classes: int | None = None):
    """(loader shaped as a registered data set, fingerprint) of the user's tensors, datasets or loaders with
    ``classes`` classes (default: the largest label + 1)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise C.ConfigError("data: expected (x_train, y_train, x_test, y_test) tensors or (train, test) datasets "
                            f"or DataLoaders, got {type(data).__name__}"
                            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    parts = tuple(data) if len(data) == 4 else (*_read(data[0], "train"), *_read(data[1], "test"))
    x_train, y_train, x_test, y_test = (torch.as_tensor(t).detach().cpu() for t in parts)
    y_train, y_test = _labels(y_train, "y_train"), _labels(y_test, "y_test")
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y) or not len(x):
            raise C.ConfigError(f"data: the {name} split has {len(x)} inputs and {len(y)} labels; need as many, "
                                f"at least one")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise C.ConfigError(f"data: train inputs have shape {tuple(x_train.shape[1:])}, test inputs "
                            f"{tuple(x_test.shape[1:])}; need the same")
    classes = _classes(classes, int(max(y_train.max(), y_test.max())))
    h = hashlib.sha256(f"classes:{classes}".encode())
    for name, t in zip(("x_train", "y_train", "x_test", "y_test"), (x_train, y_train, x_test, y_test)):
        _update(h, name, t)
    shape = "x".join(str(s) for s in x_train.shape[1:])
    fingerprint = f"{len(x_train)}+{len(x_test)} of {shape}, {classes} classes:{h.hexdigest()[:16]}"

    def load(data_cfg: C.DataConfig) -> tuple[tuple, int]:
        return (x_train, y_train, x_test, y_test), classes

    return load, fingerprint


def _read(split: Split, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset of (x, y) pairs (a DataLoader: its dataset) as stacked tensors, in index order."""
    dataset = split.dataset if isinstance(split, DataLoader) else split
    try:
        pairs = [dataset[i] for i in range(len(dataset))]
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as err:
        raise C.ConfigError(f"data: the {name} split cannot be read item by item ({one_line(err)}); allowed: a "
                            f"dataset (len and [i]) of (input, label) pairs") from None
    odd = next((i for i, item in enumerate(pairs) if not isinstance(item, (tuple, list)) or len(item) != 2), None)
    if odd is not None:
        item = pairs[odd]
        what = f"a {type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise C.ConfigError(f"data: item {odd} of the {name} split is {what}; allowed: (input, label) pairs")
    try:
        return torch.stack([torch.as_tensor(x) for x, _ in pairs]), torch.stack([torch.as_tensor(y) for _, y in pairs])
    except (TypeError, ValueError, RuntimeError) as err:
        raise C.ConfigError(f"data: the {name} split is not a dataset of (input, label) pairs of one shape "
                            f"({one_line(err)})") from None


def _classes(classes: int | None, top: int) -> int:
    """``classes`` checked against the largest label ``top`` (default: top + 1)."""
    if classes is None:
        return top + 1
    count = as_integer(classes)  # numpy ints too
    if not isinstance(count, int) or isinstance(count, bool) or count <= top:
        raise C.ConfigError(f"classes: {classes!r}; the data has label {top}, so allowed: an int >= {top + 1}")
    return count


def _labels(y: torch.Tensor, name: str) -> torch.Tensor:
    if y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise C.ConfigError(f"data: {name} must be class indices (a 1-d integer tensor, >= 0), got "
                            f"{y.dtype} of shape {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise C.ConfigError(f"data: {name} must be class indices (a 1-d integer tensor, >= 0), got label "
                            f"{int(y.min())} (index {int(y.argmin())})")
    return y.long()
