"""Imports point one way: the graph of gstlab modules (every import, at module level or inside a function,
``TYPE_CHECKING`` blocks included) has no cycle."""

import ast
from pathlib import Path

import gstlab

SRC = Path(gstlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, here: str, is_package: bool, modules: set[str]) -> list[str]:
    """The gstlab modules an import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = here.split(".") if is_package else here.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    if base not in modules:
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return subs if len(subs) == len(node.names) else [base, *subs]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        graph[name] = {m for node in ast.walk(tree) for m in imported(node, name, is_package, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_function_level_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("def f():\n    from gstlab.runner import prepare\n")
    modules = {"gstlab.runner", "gstlab.flatness"}
    assert [m for n in ast.walk(tree) for m in imported(n, "gstlab.flatness", False, modules)] == ["gstlab.runner"]
    tree = ast.parse("from . import cifar\nfrom .tensor_data import Images\n")
    modules = {"gstlab.data", "gstlab.data.cifar", "gstlab.data.tensor_data"}
    found = [m for n in ast.walk(tree) for m in imported(n, "gstlab.data", True, modules)]
    assert found == ["gstlab.data.cifar", "gstlab.data.tensor_data"]


def test_gstlab_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"gstlab.runner", "gstlab.flatness", "gstlab.study", "gstlab.executors"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
