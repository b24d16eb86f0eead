"""The package's shape (issue 14), checked on the source so it cannot drift: hooks are attached
in two places only, the import graph has no cycle and no arrow that runs back up the layers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "steerinterp"
HOOK_CALLS = {"hooks", "run_with_hooks", "add_hook"}
HOOK_OWNERS = {"steerinterp.hooks", "steerinterp.steer.apply"}  # recording() and steered()
# Lower number = lower layer; a module may import its own layer and the ones below.
LAYERS = {"cli": 6, "bench": 5, "experiments": 4, "plots": 3, "evaluate": 2, "analysis": 2,
          "steer": 1}
FACADE = "steerinterp"  # the package __init__ re-exports the public API from every layer


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every steerinterp module ``name`` imports, at the top or inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from . import lineas" imports the submodule, not the package's __init__
            cands = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                     for a in node.names]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        for cand in cands:
            while cand not in MODULES and "." in cand:
                cand = cand.rsplit(".", 1)[0]
            if cand in MODULES and cand != name:
                found.add(cand)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def test_only_hooks_and_steered_attach_hooks():
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in HOOK_CALLS and name not in HOOK_OWNERS):
                offenders.append(f"{name}:{node.lineno} .{node.func.attr}()")
    assert not offenders, f"attach hooks through steered() / recording(): {offenders}"


def test_import_graph_has_no_cycle():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_no_import_runs_back_up_the_layers():
    up = [f"{a} -> {b}" for a in sorted(GRAPH) if a != FACADE for b in sorted(GRAPH[a])
          if _layer(b) > _layer(a)]
    assert not up, f"lower layers must not import higher ones: {up}"


def test_checker_sees_lazy_and_relative_imports():
    """The checks above are only as good as the graph: it must hold known arrows, including
    one made inside a function."""
    assert "steerinterp.steer.apply" in GRAPH["steerinterp.hooks"] or \
        "steerinterp.sites" in GRAPH["steerinterp.hooks"]
    assert "steerinterp.experiments.analyses" in GRAPH["steerinterp.experiments.figures"]
    assert "steerinterp.plots" in GRAPH["steerinterp.experiments.figures"]  # a lazy import
