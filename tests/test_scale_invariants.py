"""Every small scale keeps the paper's schedule (issue: a miniature that keeps the paper's clock).

For every preset at `mini` (and at `smoke`, whose exceptions are named), checked on the *built* model and the
pruner the runner uses, against the paper's configuration and an independent ceil formula
(docs/paper.md#pruning-schedule):
- each layer prunes at the paper's epochs, or on a shorter clock with as many events and the same order;
- each event removes k = kept(i-1) - kept(i) units, kept(i) = ceil(F + (n - F)(N - i)/N), F = ceil((1-f) n),
  on the layer's own width n, and a layer has as many non-empty events as in the paper;
- layers that prune in different epochs in the paper prune in different epochs;
- LR milestones fall between the same events as in the paper;
- distinct paper presets stay distinct runs (Figure 3: 7 rates x 3 sides).
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import pytest
import torch

from gstlab import config as C
from gstlab.experiments.presets import INVARIANT_EXCEPTIONS, INVARIANTS, PRESETS, preset_config
from gstlab.models import build_model
from gstlab.models.units import unit_count
from gstlab.pruning.pruner import Pruner

PRUNED = [name for name, p in PRESETS.items() if p.paper.get("pruning") and not p.paper["pruning"].get("scratch")]


def ceil_removals(n: int, fraction: float, n_events: int) -> list[int]:
    """k per event by the paper's formula, written out independently of gstlab.pruning.schedule."""
    final = math.ceil((1 - fraction) * n)
    kept = [n] + [math.ceil(final + (n - final) * (n_events - i) / n_events) for i in range(1, n_events + 1)]
    return [a - b for a, b in zip(kept, kept[1:])]


INPUT_SHAPE = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "fashion_mnist": (1, 32, 32)}


@cache
def schedule(name: str, scale: str) -> dict[str, tuple[list[int], list[int]]]:
    """layer -> (event epochs, k per event) from the model and pruner the runner would build."""
    cfg = C.parse(preset_config(name, scale))
    channels, side = INPUT_SHAPE[cfg.data.name][0], cfg.data.image_size or 32
    model = build_model(cfg.model, (channels, side, side), 10)
    units = model.prunable_units()
    plan = dataclasses.replace(cfg.pruning, criterion="l1")  # the criterion does not change the schedule
    pruner = Pruner(model, units, plan, torch.Generator(), lambda *_: None)
    out = {}
    for unit, layer in pruner.layers:
        epochs = pruner.epochs[unit.name]
        out[unit.name] = (epochs, ceil_removals(unit_count(model, unit), layer.fraction, len(epochs)))
    return out


def nonempty(ks: list[int]) -> int:
    return sum(k > 0 for k in ks)


def check(scale: str, invariant: str, ok: bool) -> None:
    assert invariant in INVARIANTS
    if invariant in INVARIANT_EXCEPTIONS[scale]:
        return
    assert ok, f"{scale}: {invariant}"


def test_only_smoke_is_excused():
    assert INVARIANT_EXCEPTIONS["mini"] == () and INVARIANT_EXCEPTIONS["paper"] == ()
    assert set(INVARIANT_EXCEPTIONS["smoke"]) == set(INVARIANTS)


@pytest.mark.parametrize("scale", ["mini", "smoke"])
@pytest.mark.parametrize("name", PRUNED)
def test_events_follow_the_paper(name, scale):
    paper, small = schedule(name, "paper"), schedule(name, scale)
    clock = preset_config(name, scale)["train"]["epochs"] / preset_config(name, "paper")["train"]["epochs"]
    for layer, (epochs, ks) in paper.items():
        s_epochs, s_ks = small[layer]
        same_clock = s_epochs == epochs
        shorter = clock < 1 and len(s_epochs) == len(epochs)
        check(scale, "event epochs", same_clock or shorter)
        check(scale, "non-empty events", nonempty(s_ks) == nonempty(ks))
    if clock == 1 and scale == "mini":
        assert {k: v[0] for k, v in small.items()} == {k: v[0] for k, v in paper.items()}


@pytest.mark.parametrize("scale", ["mini", "smoke"])
@pytest.mark.parametrize("name", PRUNED)
def test_staggered_layers_stay_staggered_and_milestones_stay_between_the_same_events(name, scale):
    def firsts(sched):
        return [epochs[0] for epochs, _ in sched.values()]

    def milestone_slots(n, s):
        cfg = preset_config(n, s)
        every = sorted({e for epochs, _ in schedule(n, s).values() for e in epochs})
        return [sum(e <= m for e in every) for m in cfg["optim"]["milestones"]]

    paper_first, small_first = firsts(schedule(name, "paper")), firsts(schedule(name, scale))
    same_order = all((a < b) == (c < d) and (a == b) == (c == d)
                     for (a, c) in zip(paper_first, small_first) for (b, d) in zip(paper_first, small_first))
    check(scale, "staggered layers", same_order)
    check(scale, "milestones between events", milestone_slots(name, "paper") == milestone_slots(name, scale))


@pytest.mark.parametrize("scale", ["mini", "smoke"])
def test_distinct_presets_stay_distinct_runs(scale):
    ids = {}
    for name in PRESETS:
        ids.setdefault(C.run_id(C.parse(preset_config(name, scale))), []).append(name)
    merged = [names for names in ids.values() if len(names) > 1]
    check(scale, "distinct runs", not merged)
    figure3 = {C.run_id(C.parse(preset_config(n, scale))) for n in PRESETS if n.startswith("F3_")}
    check(scale, "distinct runs", len(figure3) == 21)


def test_mini_keeps_the_paper_clock_and_names_its_shorter_one():
    for name in PRESETS:
        paper, mini = preset_config(name, "paper"), preset_config(name, "mini")
        if PRESETS[name].family == "long":
            assert mini["train"]["epochs"] * 10 == paper["train"]["epochs"]
        else:
            assert mini["train"]["epochs"] == paper["train"]["epochs"]
            assert mini["optim"]["milestones"] == paper["optim"]["milestones"]
            assert mini.get("pruning", {}).get("period") == paper.get("pruning", {}).get("period")


def test_intervention_windows_keep_their_share_of_the_retrain_period():
    for name in PRESETS:
        paper, mini = preset_config(name, "paper"), preset_config(name, "mini")
        if not paper.get("intervention"):
            continue
        share_paper = paper["intervention"]["batches"] / math.ceil(50000 / 128)  # 391 batches per CIFAR epoch
        share_mini = mini["intervention"]["batches"] / math.ceil(mini["data"]["train_subset"] / 128)
        window = 1 if paper["intervention"]["batches"] == 1 else 2
        assert mini["intervention"]["batches"] == max(window, round(share_paper * math.ceil(2000 / 128)))
        if paper["intervention"]["batches"] > 1:  # one batch is the smallest window: it stays one batch
            assert share_mini == pytest.approx(share_paper, rel=0.5 / mini["intervention"]["batches"] + 0.02)


def test_the_most_pruned_layer_keeps_the_papers_share_of_units():
    """The paper keeps 52 of 512 conv8 filters; mini keeps 13 of 128 (the same 10%), never a handful."""
    for name in PRUNED:
        cfg = C.parse(preset_config(name, "mini"))
        model = build_model(cfg.model, (1, 16, 16), 10)
        by_name = {u.name: u for u in model.prunable_units()}
        for layer in cfg.pruning.layers:
            n = unit_count(model, by_name[layer.name])
            assert math.ceil((1 - layer.fraction) * n) >= 10 or n >= 64, (name, layer.name)
