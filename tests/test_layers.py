"""The package's layers, read from its imports (every ``import`` statement, also inside functions).

* ``algorithms/`` imports only torch and the standard library;
* ``verl_ext/`` (the veRL glue) never imports the optional CPU backend ``cpu/``;
* ``analysis/`` (the offline tools) never imports the veRL glue;
* ``scoring/`` (model-level) imports neither veRL nor the glue;
* no two files of the package import each other, directly or through others.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "verl_repro"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Absolute names of every module ``name`` imports (relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def _package_edges(name: str) -> set[str]:
    """Package files ``name`` imports: the deepest module of each imported name."""
    edges = set()
    for imported in _imports(name):
        parts = imported.split(".")
        while parts and ".".join(parts) not in MODULES:
            parts.pop()
        if parts and parts[0] == "verl_repro" and ".".join(parts) != name:
            edges.add(".".join(parts))
    return edges


def _in(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def test_the_reader_sees_every_file():
    assert "verl_repro.algorithms.segments" in MODULES and "verl_repro.verl_ext.scoring" in MODULES
    assert "verl_repro.algorithms.correlation" in _package_edges("verl_repro.config")
    assert "verl_repro.analysis.hf_scoring" in _package_edges("verl_repro.analysis.trajectories")  # inside a function


def test_algorithms_import_only_torch_and_the_standard_library():
    offenders = {
        name: sorted(imported for imported in _imports(name)
                     if not _in(imported, "verl_repro.algorithms") and imported.split(".")[0] not in ("torch", *sys.stdlib_module_names))
        for name in MODULES if _in(name, "verl_repro.algorithms")
    }
    assert not {name: found for name, found in offenders.items() if found}


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("verl_repro.verl_ext", "verl_repro.cpu"),
        ("verl_repro.analysis", "verl_repro.verl_ext"),
        ("verl_repro.scoring", "verl_repro.verl_ext"),
        ("verl_repro.scoring", "verl"),
    ],
)
def test_layer_does_not_import(layer, forbidden):
    offenders = {
        name: sorted(imported for imported in _imports(name) if _in(imported, forbidden))
        for name in MODULES if _in(name, layer)
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_no_import_cycle_between_package_files():
    graph = {name: _package_edges(name) for name in MODULES}
    # A package's face (``__init__``) hands its submodules' names on; a submodule importing a
    # sibling goes through the face only by name, so the face -> submodule edges close no loop.
    graph = {name: {e for e in edges if not (MODULES[name].name == "__init__.py" and _in(e, name))} for name, edges in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
