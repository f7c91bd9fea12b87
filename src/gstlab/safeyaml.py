"""YAML input bounded before it is built: size, nesting depth, alias expansion, duplicate keys, plain JSON types.

``load(text)`` is what every config, study file and ``--set`` value goes through. PyYAML's ``safe_load``
accepts a duplicate key (the last one wins: ``epochs: 6`` then ``epochs: 600`` trains 600), builds an alias
bomb's shared nodes quickly and only explodes when the result is copied, recurses once per nesting level, and
returns dates, bytes and sets that are not JSON. Here each of these is a :class:`YamlError`
(the callers make it a ConfigError: exit 2) naming the field where there is one.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a config or study file (the paper's largest study file is a few KB)
MAX_DEPTH = 64  # nesting levels of lists and mappings (a config has 4)
MAX_VALUES = 100_000  # values after expanding every alias (a paper-scale study has a few thousand)
MAX_INT_DIGITS = 4300  # Python's limit for converting a decimal string to an int (sys.get_int_max_str_digits)
_MERGE, _INT = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:int"


class YamlError(ValueError):
    """The text is not acceptable YAML input; the message names where and why (converted to ConfigError)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys and numbers YAML 1.1 reads in base 8 or 60."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                duplicate = False
            if duplicate:
                raise YamlError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); give each key once")
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.1 reads ``010`` as octal (8) and ``1:30`` as base 60 (90): refused, not trained on."""
        digits = str(node.value).replace("_", "").lstrip("+-")
        base = 60 if ":" in digits else 8 if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit() else 0
        if base:
            raise YamlError(f"{node.value!r} (line {node.start_mark.line + 1}) is read by YAML 1.1 as a base-{base} "
                            f"integer ({super().construct_yaml_int(node)}); allowed: a plain decimal integer "
                            f"(or quote it)")
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        if ":" in str(node.value):
            raise YamlError(f"{node.value!r} (line {node.start_mark.line + 1}) is read by YAML 1.1 as a base-60 "
                            f"number ({super().construct_yaml_float(node)}); allowed: a plain decimal number")
        return super().construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def _check_depth(text: str) -> None:
    """Walk the parser's events (no recursion) and refuse nesting deeper than MAX_DEPTH."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlError(f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values in ``node`` once every alias is expanded (shared nodes counted once per use, computed once)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once (SafeLoader refuses it later)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size = min(size, MAX_VALUES + 1)
    return size


def _check_scalars(root: yaml.Node) -> None:
    """Refuse, naming the field, what cannot be built as plain data: merge keys (``<<: *anchor``) and integers
    longer than Python converts. Walks the node graph once per node (no recursion)."""
    stack, seen = [(root, "")], set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.tag == _MERGE:
                    raise YamlError(f"{path or 'top level'}: merge keys (<<, line {key.start_mark.line + 1}) are not "
                                    f"supported; write the keys out")
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, f"{path}.{name}" if path else name))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif node.tag == _INT and len(node.value) > MAX_INT_DIGITS:
            raise YamlError(f"{path or 'value'}: an integer of {len(node.value):,} digits (line "
                            f"{node.start_mark.line + 1}); allowed: at most {MAX_INT_DIGITS:,} digits")


def _plain(value: Any, path: str) -> None:
    """Refuse values that are not JSON types (dates, bytes, sets, non-string keys), naming the field."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise YamlError(f"{path or 'top level'}: key {key!r} is a {type(key).__name__}; keys are strings")
            _plain(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        kind = {"date": "a date", "datetime": "a date", "bytes": "binary data (!!binary)",
                "set": "a set (!!set)"}.get(type(value).__name__, f"a {type(value).__name__}")
        raise YamlError(f"{path or 'value'}: {kind} is not allowed; give a string, number, boolean, list or "
                        f"mapping (quote dates: '2020-01-01')")


def load(text: str) -> Any:
    """The plain (JSON-typed) value of YAML ``text``; YamlError (or yaml.YAMLError for bad syntax) if refused."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"longer than {MAX_BYTES:,} characters")
    _check_depth(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise YamlError(f"expands to more than {MAX_VALUES:,} values (YAML aliases repeat a part many times)")
        _check_scalars(node)
        value = loader.construct_document(node)
    except YamlError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as err:  # PyYAML's constructors, e.g. on `!!float`
        raise YamlError(f"a value cannot be built ({type(err).__name__}: {err})") from None
    finally:
        loader.dispose()
    _plain(value, "")
    return value
