"""The Python control plane is layered: every module imports, and no import chain comes back to its start.

Imports are read from the source with ast, including those inside functions,
so a cycle cannot hide behind an import placed in a function body.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hypervisor"
# The only imports inside functions, each for a reason other than a cycle.
DEFERRED = {
    ("hypervisor", "hypervisor.api"): "the package's names load on first use (python -m hypervisor.cli)",
    ("hypervisor.entry", "hypervisor.cli"): "the CLI loads inside the Ctrl-C guard",
    ("hypervisor.entry", "hypervisor.status"): "the CLI loads inside the Ctrl-C guard",
    ("hypervisor.netns", "hypervisor._ivy_netem"): "only the link emulator's helper process loads it",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runs_only_as_script(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def imports_of(name: str) -> dict[str, bool]:
    """The hypervisor modules `name` imports, each with whether the import sits inside a function."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, bool] = {}

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _runs_only_as_script(child):
                continue   # `if __name__ == "__main__":` runs in a module of its own, __main__
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                # `from pkg import mod` names a module when pkg.mod is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES or a.name.startswith("_ivy")
                           else base for a in child.names]
            for target in targets:
                if target.startswith("hypervisor") and target != name:
                    found[target] = found.get(target, True) and in_function
            visit(child, nested)

    visit(tree, False)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in GRAPH.get(node, {}):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in GRAPH:
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_there_is_no_import_cycle() -> None:
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_the_cycle_finder_finds_one() -> None:
    saved = dict(GRAPH)
    try:
        GRAPH["hypervisor.base"] = {"hypervisor.node": False}
        cycle = find_cycle()
        assert cycle and cycle[0] == cycle[-1] and "hypervisor.base" in cycle, cycle
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_import_is_hidden_in_a_function_without_a_reason() -> None:
    hidden = {(name, target) for name, targets in GRAPH.items() for target, deferred in targets.items() if deferred}
    assert hidden <= set(DEFERRED), sorted(hidden - set(DEFERRED))


def test_the_bottom_layer_imports_nothing_of_ivyvm() -> None:
    assert GRAPH["hypervisor.base"] == {} and GRAPH["hypervisor.status"] == {}
    assert set(GRAPH["hypervisor.stopsignals"]) == {"hypervisor.status"}


def test_node_and_cluster_do_not_reach_up_to_the_cli() -> None:
    assert "hypervisor.cli" not in GRAPH["hypervisor.node"]
    assert "hypervisor.node" not in GRAPH["hypervisor.cluster"]


def test_production_modules_never_import_the_devkit_or_the_test_kit() -> None:
    for name, targets in GRAPH.items():
        if not name.startswith("hypervisor.devkit"):
            assert not any(t.startswith(("hypervisor.devkit", "hypervisor._ivy_testkit")) for t in targets), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)
