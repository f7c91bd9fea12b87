"""Issue 24, item 5: random YAML documents and --set strings (types, nesting, unicode, huge numbers, YAML tags,
anchors and aliases, duplicate keys) given to the config parser, the study parser and the checks a dry run
does either give a valid config or one ConfigError of one line (exit 2), never another exception.

In-process and derandomized (the same examples on every run), a few thousand examples in a few seconds."""

import dataclasses
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gstlab import config as C
from gstlab import study as S
from test_runner import TINY

FUZZ = settings(max_examples=700, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted config field (sections, fields and a few list indices): what the fuzzer aims at."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += _paths(tp, f"{path}.")
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            out += [f"{path}.0", f"{path}.1"]
            if dataclasses.is_dataclass(item):
                out += _paths(item, f"{path}.0.")
    return out


PATHS = _paths(C.RunConfig)
KEYS = sorted({p.rsplit(".", 1)[-1] for p in PATHS})
NUMBERS = st.one_of(st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2**63, 1e-300]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12),
                    st.sampled_from(["mlp", "sgd", "synthetic", "l2", "auto", "cpu", "on", "1e-3", "fc1", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner,
                                                 max_size=4)), max_leaves=12)
# YAML the dumper never writes: tags, anchors and aliases, flow syntax, dates, deep nesting, tabs
TOKENS = st.sampled_from(["[", "]", "{", "}", ": ", ", ", "- ", "\n", "  ", "\t", "&a ", "*a", "!!set ", "!!binary ",
                          "!!python/object:os.system ", "!!float ", "? ", "2020-01-01", "1e9", "0x1F", ".nan",
                          "~", "'", '"', "|", ">", "#", "%YAML 1.1\n", "---\n", "...", "<<: *a\n", "é", "\u2028",
                          *KEYS[:40]])


def _one_line_or_valid(check, *args) -> None:
    """``check(*args)`` returns, or raises a ConfigError whose message is one non-empty line."""
    try:
        check(*args)
    except C.ConfigError as err:
        message = str(err)
        assert len(message.splitlines()) == 1, repr(message)


def _config_text(text: str) -> None:
    cfg = C.parse(C.yaml_mapping(text, "config file F"))
    C.run_id(cfg)


@FUZZ
@given(st.one_of(
    VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.fixed_dictionaries({}, optional={k: VALUES for k in ("data", "model", "optim", "train", "pruning",
                                                             "intervention", "probes", "seed")}).map(yaml.safe_dump),
    st.lists(TOKENS, max_size=30).map("".join),
    st.text(max_size=60),
))
def test_random_yaml_documents_give_a_config_or_one_line(text):
    _one_line_or_valid(_config_text, text)


def _override(assignment: str) -> None:
    cfg = C.parse(TINY, [assignment])
    C.run_id(cfg)


@FUZZ
@given(st.one_of(
    st.tuples(st.sampled_from(PATHS), VALUES).map(lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1]).strip()}"),
    st.tuples(st.sampled_from(PATHS), st.lists(TOKENS, max_size=8).map("".join)).map("=".join),
    st.tuples(st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=4), st.sampled_from(["0", "9", ""])),
                       min_size=1, max_size=5).map(".".join), st.text(max_size=10)).map("=".join),
    st.text(max_size=30),
))
def test_random_set_strings_give_a_config_or_one_line(assignment):
    _one_line_or_valid(_override, assignment)


def _study(data) -> None:
    study = S.study_from_dict(data)
    if len(study.settings) * len(study.seeds) * max(1, len(S.grid_points(study.grid))) <= 20:
        S.expand(study)  # what `gst sweep --dry-run` lists


@FUZZ
@given(st.fixed_dictionaries(
    {"settings": st.one_of(st.just([{"inline": TINY}]), st.lists(st.one_of(
        VALUES, st.fixed_dictionaries({}, optional={"preset": st.one_of(st.sampled_from(["F2_VGG_4", "x"]), VALUES),
                                                    "inline": st.one_of(st.just(TINY), VALUES),
                                                    "label": VALUES, "set": VALUES})), max_size=3))},
    optional={"name": VALUES, "seeds": st.one_of(VALUES, st.integers(-3, 10**12)), "grid": VALUES, "set": VALUES,
              "scale": VALUES, "figure": VALUES}))
def test_random_studies_give_runs_or_one_line(data):
    _one_line_or_valid(_study, data)
