"""The package layers: cli -> benchmarks -> studies -> engine -> loaders -> kernels, no arrow back
up (the engine knows nothing of the paper's experiments) and
no import circle between modules (lazy imports inside functions count: they still tie the
modules together, only later)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["cli", "benchmarks", "studies", "engine", "loaders", "kernels"]  # each may import only those after it


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pkg import module` imports the module when it is one
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in LAYERS}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for layer in LAYERS for p in (REPO / layer).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for module, targets in _graph().items():
        rank = LAYERS.index(module.split(".")[0])
        upward += [f"{module} -> {t}" for t in targets if LAYERS.index(t.split(".")[0]) < rank]
    assert upward == []


def test_every_layer_is_seen():
    """A layer the walk misses (renamed, emptied) would make the test above pass vacuously."""
    seen = {module.split(".")[0] for module in _graph()}
    assert seen == set(LAYERS)


def test_engine_holds_no_experiment():
    """The paper's grids, planner, analysis and theory live in studies/, not under engine/."""
    assert not [p for name in ("study", "analysis", "theory") if (p := REPO / "engine" / name).exists()]


def test_no_import_circle():
    graph = _graph()
    # A package's __init__ importing its own submodules is how packages re-export: drop those
    # edges (parent -> child), a child importing its package is still a circle when it closes.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                              else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_an_import_error_inside_any_layer_is_a_bug_not_a_missing_extra():
    from cli.errors import OWN_PACKAGES, is_user_error

    assert set(OWN_PACKAGES) == set(LAYERS)
    for layer in LAYERS:
        assert not is_user_error(ImportError("cannot import name 'x'", name=f"{layer}.module"))
    assert is_user_error(ImportError("No module named 'ffcv'", name="ffcv"))
