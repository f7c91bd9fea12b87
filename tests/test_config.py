"""Config parsing, validation messages, overrides and frozen run ids."""

import json
import re

import pytest

from gstlab import config as C
from gstlab.surprises import surprises

VGG_SCHEDULE = {"layers": [{"name": "conv8", "fraction": 0.9, "start": 6, "end": 275}], "period": 40}


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = C.parse({"pruning": VGG_SCHEDULE, "seed": 3})
    path = tmp_path / "c.yaml"
    path.write_text(C.dump_yaml(cfg))
    again = C.parse(C.load_yaml(path))
    assert again == cfg and C.run_id(again) == C.run_id(cfg)


@pytest.mark.parametrize("data, message", [
    ({"pruning": {"critrion": "l2"}}, "pruning.critrion: unknown key; allowed keys: criterion"),
    ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer"),
    ({"pruning": {"criterion": "l3"}}, "pruning.criterion: expected one of 'l1', 'l2'"),
    ({"pruning": {"side": "big"}}, "pruning.side: expected one of 'smallest', 'random', 'largest'"),
    ({"pruning": {"layers": [{"name": "conv8", "fraction": 1.0}]}},
     r"pruning.layers\[0\].fraction: must be in \[0, 1\)"),
    ({"pruning": {"layers": [{"name": "conv8", "fraction": -0.1}]}}, r"fraction: must be in \[0, 1\)"),
    ({"pruning": {"layers": [{"name": "conv8", "fraction": 0.5, "end": 400}]}}, "ends at epoch 400 but training"),
    ({"pruning": {"layers": [{"fraction": 0.5}]}}, r"pruning.layers\[0\].name: required field is missing"),
    ({"intervention": {"kind": "blur"}}, "intervention.kind: expected one of 'none', 'zero'"),
    ({"intervention": {"kind": "zero", "batches": -1}, "pruning": VGG_SCHEDULE}, "intervention.batches: must be >= 0"),
    ({"intervention": {"kind": "gaussian", "scale": 0.0}, "pruning": VGG_SCHEDULE}, "intervention.scale: must be > 0"),
    ({"seed": 1.5}, "seed: expected an integer"),
    ({"extra": 1}, "extra: unknown key; allowed keys: data, model"),
])
def test_bad_input_names_the_field(data, message):
    with pytest.raises(C.ConfigError, match=message):
        C.parse(data)


def test_unknown_layer_name_lists_allowed_layers():
    cfg = C.parse({"pruning": {"layers": [{"name": "conv9", "fraction": 0.5}]}})
    with pytest.raises(C.ConfigError, match=r"unknown layer 'conv9'; allowed: conv1, conv2"):
        C.validate(cfg, ["conv1", "conv2"])


def test_overrides_parse_yaml_values_and_list_indices():
    cfg = C.parse({"pruning": VGG_SCHEDULE}, ["pruning.period=4", "pruning.layers.0.fraction=0.5",
                                             "optim.milestones=[10, 20]", "data.train_subset=null"])
    assert cfg.pruning.period == 4 and cfg.pruning.layers[0].fraction == 0.5
    assert cfg.optim.milestones == (10, 20) and cfg.data.train_subset is None
    with pytest.raises(C.ConfigError, match="no list element 3"):
        C.parse({"pruning": VGG_SCHEDULE}, ["pruning.layers.3.fraction=0.5"])
    with pytest.raises(C.ConfigError, match="expected dotted.key=value"):
        C.parse({}, ["pruning.period"])


def test_run_id_ignores_defaults_and_non_result_fields():
    base = C.parse({})
    assert C.run_id(base) == C.run_id(C.parse({"train": {"device": "cpu", "progress": False}, "name": "x"}))
    assert C.run_id(base) == C.run_id(C.parse({"pruning": {"period": 4}}))  # 4 is the default
    assert C.run_id(base) != C.run_id(C.parse({"seed": 1}))


def test_run_ids_are_frozen():
    # Regression: changing these silently renames every stored run. Update only with a migration note.
    assert C.run_id(C.parse({})) == "44136fa355b3"
    assert C.run_id(C.parse({"pruning": VGG_SCHEDULE, "seed": 2})) == "16165ca69a78"


def test_a_result_revision_renames_only_the_runs_whose_results_it_changed():
    # intervention revision 2 (an event's acc_after applies only its own windows): these runs had id a372ca119133
    zeroing = C.parse({"pruning": VGG_SCHEDULE, "intervention": {"kind": "zero", "batches": 50}, "seed": 2})
    assert C.result_revisions(zeroing) == {"intervention": 2} and C.run_id(zeroing) == "565103abbe1d"
    assert C.result_revisions(C.parse({"pruning": VGG_SCHEDULE, "seed": 2})) == {}  # kept its id (above)


def test_run_id_hashes_the_resolved_precision_and_fp32_as_absent():
    fp32 = {"train": {"device": "cpu", "precision": "fp32"}}
    auto_cpu = {"train": {"device": "cpu", "precision": "auto"}}
    bf16 = {"train": {"device": "cpu", "precision": "bf16"}}
    auto_cuda = {"train": {"device": "cuda", "precision": "auto"}}
    assert C.run_id(C.parse(fp32)) == C.run_id(C.parse(auto_cpu)) == "44136fa355b3"  # the id fp32 runs always had
    assert C.run_id(C.parse(bf16)) == C.run_id(C.parse(auto_cuda)) == "84ffc6542dcf"  # auto on CUDA is bf16
    assert C.resolved_precision(C.parse(auto_cpu).train) == "fp32"
    assert C.resolved_precision(C.parse({}).train, "cuda") == "bf16"
    assert C.resolved_precision(C.parse(fp32).train, "cuda") == "fp32"


def test_paper_presets_train_in_fp32_on_cuda_unless_asked():
    from gstlab.experiments.presets import PRESETS, preset_config

    for name in PRESETS:
        cfg = C.parse(preset_config(name, "paper"))
        assert C.resolved_precision(cfg.train, "cuda") == "fp32", name
    asked = C.parse(preset_config("F2_VGG_4", "paper"), ["train.precision=bf16"])
    assert C.resolved_precision(asked.train, "cuda") == "bf16"
    assert C.run_id(asked) != C.run_id(C.parse(preset_config("F2_VGG_4", "paper")))


def test_legal_but_surprising_values_get_one_warning_line_each_and_still_run(tmp_path, capsys):
    from gstlab.cli import main
    from test_runner import TINY

    cfg = C.parse(TINY, ["optim.gamma=1", "pruning.layers.0.fraction=0", "data.label_noise=0.6"])
    lines = surprises(cfg)
    assert [line.split(":")[0] for line in lines] == ["optim.gamma", "pruning.layers[0].fraction",
                                                      "data.label_noise"]
    assert surprises(C.parse(TINY)) == []  # the ordinary config is not surprising
    path = tmp_path / "c.yaml"
    path.write_text(C.dump_yaml(cfg))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("gst: warning:")] == [
        f"gst: warning: {x}" for x in lines]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # the new fields are printed too
    assert (f"peak test acc {summary['peak_test_acc']:.2f}% (epoch {summary['peak_epoch']})   "
            f"memorization {summary['memorization']:.2f}%") in out


def test_a_preset_window_left_behind_by_a_changed_training_set_is_named_with_the_window_that_keeps_its_share():
    from gstlab.experiments.presets import PRESETS, SCALES, preset_config

    data = preset_config("F5_3", "mini")  # 1105 paper batches of 391 per epoch -> 45 mini batches of 16
    moved = C.parse(data, ["data.train_subset=4000"])  # 32 batches per epoch: round(1105 * 32 / 391) = 90
    assert surprises(moved) == ["intervention.batches: 45 is F5_3's mini window for 16 batches per epoch, but "
                                  "this run has 32; intervention.batches=90 keeps the paper's share of training"]
    assert surprises(C.parse(data, ["data.train_subset=4000", "intervention.batches=90"])) == []
    assert surprises(C.parse(preset_config("F5_1", "mini"), ["data.train_subset=4000"])) == []  # 1 stays 1
    assert [n for n in PRESETS for s in SCALES if surprises(C.parse(preset_config(n, s)))] == []


def test_a_mapping_set_on_a_section_changes_only_the_keys_it_names():
    """--set train={epochs: 4} (or a study's set) had replaced the section, resetting batch_size to its default."""
    cfg = C.parse({"train": {"epochs": 3, "batch_size": 32}}, ["train={epochs: 4}"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (4, 32)


@pytest.mark.parametrize("value, read_as", [("010", "base-8 integer (8)"), ("1:30", "base-60 integer (90)"),
                                            ("1:30.5", "base-60 number (90.5)")])
def test_numbers_yaml_1_1_reads_in_another_base_are_refused(value, read_as):
    with pytest.raises(C.ConfigError, match=re.escape(f"is read by YAML 1.1 as a {read_as}")):
        C.parse({}, [f"train.epochs={value}"])


def test_scale_with_a_config_or_study_file_is_refused_not_ignored(tmp_path, capsys):
    from gstlab.cli import main
    from test_runner import TINY

    path = tmp_path / "c.yaml"
    path.write_text(C.dump_yaml(C.parse(TINY)))
    assert main(["run", "--config", str(path), "--scale", "paper", "--out", str(tmp_path / "run")]) == 2
    assert "--scale applies to --preset only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    study = tmp_path / "s.yaml"
    study.write_text(C.dump_yaml({"name": "s", "seeds": 1, "settings": [{"preset": "F2_VGG_0"}]}))
    assert main(["sweep", str(study), "--scale", "smoke", "--dry-run"]) == 2
    assert "a study file gives its own `scale:`" in capsys.readouterr().err
    assert main(["sweep", "--study", "fig2_vgg", "--scale", "smoke", "--dry-run"]) == 0  # presets keep it


def test_presets_flags_that_would_be_ignored_are_refused(capsys):
    from gstlab.cli import main

    for argv, message in ((["--show", "F2_VGG_4", "--studies"], "--studies: lists the study presets, --show prints"),
                          (["--show", "", "--studies"], "--studies: lists the study presets, --show prints"),
                          (["--scale", "paper"], "--scale: only with --show NAME"),
                          (["--show", "NOPE"], "--show: unknown preset 'NOPE'")):
        assert main(["presets", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["presets", "--show", "F2_VGG_4", "--scale", "smoke"]) == 0
    assert "name: F2_VGG_4@smoke" in capsys.readouterr().out


def test_an_unpruned_run_prints_no_nan(tmp_path, capsys):
    from gstlab.cli import main
    from test_runner import TINY

    path = tmp_path / "c.yaml"
    path.write_text(C.dump_yaml(C.parse(TINY, ["pruning.layers=[]"])))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mean_flips"] is None  # no event: not measured (NaN in memory, null in the file)
    assert "nan" not in out.lower() and "mean flips" not in out
    path.write_text(C.dump_yaml(C.parse(TINY, ["optim.lr=1e30"])))  # diverges in epoch 0: no peak either
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "diverged"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "diverged at epoch 0" in out and "nan" not in out.replace("loss nan", "").lower()


@pytest.mark.parametrize("section", ["pruning", "train", "probes", "intervention"])
def test_a_section_set_to_null_is_refused_not_reset_to_its_defaults(section):
    # `pruning:` (bare) or --set pruning= had trained without pruning; train= had trained 325 epochs
    message = rf"^{section}: expected a mapping of its fields, got null \(a section cannot be unset"
    with pytest.raises(C.ConfigError, match=message):
        C.parse({"pruning": VGG_SCHEDULE, section: None})
    with pytest.raises(C.ConfigError, match=message):
        C.parse({"pruning": VGG_SCHEDULE}, [f"{section}="])
    with pytest.raises(C.ConfigError, match=r"^pruning.layers\[0\]: expected a mapping of its fields, got null"):
        C.parse({"pruning": {"layers": [None]}})


@pytest.mark.parametrize("name", ["a\0b", "a\nb", "tab\there", "del\x7f", "next-line\x85"])
def test_a_name_with_a_control_character_is_refused(name):
    with pytest.raises(C.ConfigError, match=r"^name: .* holds a control character; allowed: printable text$"):
        C.parse({"name": name})


def test_official_compatibility_windows_keep_their_ids_under_the_intervention_revision():
    compat = {"pruning": VGG_SCHEDULE, "intervention": {"kind": "gaussian", "batches": 50, "count_eval_batches": True}}
    assert C.result_revisions(C.parse(compat)) == {}  # acc_after is the perturbed post-event evaluation there
    restore = {**compat, "intervention": {**compat["intervention"], "kind": "zero_restore"}}
    assert C.result_revisions(C.parse(restore)) == {"intervention": 2}  # the bias of a layer without BatchNorm
    supplied = C.replace(C.parse(restore), model=C.replace(C.parse(restore).model, supplied="MyNet:abc"))
    assert C.result_revisions(supplied) == {"intervention": 3}  # a non-affine BatchNorm's bias and running mean
    zero = {**restore, "intervention": {"kind": "zero", "batches": 50}}
    assert C.result_revisions(C.replace(C.parse(zero), model=supplied.model)) == {"intervention": 2}
    activation = C.parse({"pruning": {**VGG_SCHEDULE, "criterion": "activation"}})
    assert C.result_revisions(activation) == {}  # the zoo's scores did not change
    assert C.result_revisions(C.replace(activation, model=supplied.model)) == {"activation": 2}

    from gstlab.pruning.criteria import Activation
    from gstlab.registry import criteria

    class Mine(Activation):
        description = "a user's criterion on the activation statistics"

    criteria.register("mine_on_activations", Mine())
    try:
        mine = C.parse({"pruning": {**VGG_SCHEDULE, "criterion": "mine_on_activations"}})
        assert C.result_revisions(C.replace(mine, model=supplied.model)) == {"activation": 2}
    finally:
        criteria.unregister("mine_on_activations")


@pytest.mark.parametrize("model, message", [
    ({"arch": "vgg11_bn", "channels": [8, 16, 32, 32, 128, 128, 128, 256], "width": 0.25},
     "model.width: not read (model.channels gives vgg11_bn's 8 conv widths)"),  # the mini presets' case
    ({"arch": "resnet20", "hidden": [4]}, "model.hidden: not read (resnet20 is not mlp)"),
    ({"arch": "resnet20", "batch_norm": False}, "model.batch_norm: not read (resnet20 is not mlp)"),
    ({"arch": "mlp", "width": 2.0}, "model.width: not read (mlp sizes its layers by model.hidden)"),
])
def test_a_model_field_its_architecture_does_not_read_is_refused(model, message):
    """Each had renamed the run (a new id) and built the same network (an audit, 2026-12-06)."""
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.check_intent(C.parse({"model": model}, []))
    C.check_intent(C.parse({"model": {"arch": "vgg11_bn", "width": 0.25}}, []))  # width is read without channels
    C.parse({"model": model}, [])  # a stored config is read back as written (gst flatness, a resume)
