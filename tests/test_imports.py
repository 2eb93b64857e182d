"""The import graph flows one way: no cycle inside perceiver_mt (imports inside functions count), the core
never imports a plugin, and the task contract imports nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "perceiver_mt"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_by(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (functions too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
               and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            found |= submodules or {node.module}  # `from package import module` depends on that module only
    return found


def owning_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = {owning_module(imported) for imported in imported_by(path) if imported.startswith("perceiver_mt")}
        # A module importing its own package's __init__ (or a package its children) is how Python loads them.
        edges[name] = {t for t in targets if t and t != name and not name.startswith(f"{t}.")}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_function_local_cycle(tmp_path):
    edges = graph()
    # The old one: the parallel layer's schema module reading config.py, which reads that schema.
    edges["perceiver_mt.parallelize"] = edges["perceiver_mt.parallelize"] | {"perceiver_mt.config"}
    assert find_cycle(edges) == ["perceiver_mt.config", "perceiver_mt.parallelize", "perceiver_mt.config"]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from perceiver_mt.config import ConfigError\n")
    assert "perceiver_mt.config" in imported_by(source)


def test_core_imports_no_plugin_and_the_task_contract_imports_nothing_above_it():
    for name, path in MODULES.items():
        plugins = {i for i in imported_by(path) if i.split(".")[0] in ("tasks", "datamodules")}
        assert not plugins, f"{name} imports {plugins}"
    contract = {owning_module(i) for i in imported_by(MODULES["perceiver_mt.task"]) if i.startswith("perceiver_mt")}
    assert contract <= {"perceiver_mt.model.init", "perceiver_mt.model.perceiver"}, contract


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += edges.get(node, ())
    return seen


def test_the_model_transforms_load_no_lightning():
    """A bare loop or a benchmark applies checkpointing, compile and FSDP without Lightning's ~0.1 GB: nothing
    `perceiver_mt.parallelize` imports, directly or through the package, imports Lightning; the parallel layer
    that needs Lightning builds on it (one way)."""
    edges = graph()
    modules = reachable(edges, "perceiver_mt.parallelize")
    assert "perceiver_mt.parallel" not in modules
    lightning = {name: sorted(i for i in imported_by(MODULES[name]) if i.split(".")[0] in ("lightning", "pytorch_lightning"))
                 for name in modules}
    assert not any(lightning.values()), {name: found for name, found in lightning.items() if found}
    assert "perceiver_mt.parallelize" in edges["perceiver_mt.parallel"]
