"""The package's layers, read from its imports (every ``import`` statement, also inside functions).

* the package root holds only what a user imports or runs first (``cli``, ``config``, ``info``,
  ``run_metrics``); everything else lives in a folder named after its job;
* ``algorithms/`` imports only torch and the standard library (its oracle, ``algorithms/reference.py``,
  also scipy and numpy);
* ``plugin/`` (entry point, import hooks, the veRL pin) imports no other part of the package: the
  entry point names the modules it registers and imports them by name when veRL loads it;
* ``verl_ext/`` (the veRL glue) never imports the optional CPU backend ``cpu/``;
* ``analysis/`` (the offline tools) and ``evaluation/`` never import the veRL glue;
* ``scoring/`` and ``gradients/`` (model-level) and ``models/`` import neither veRL nor the glue;
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


ROOT_MODULES = {"verl_repro", "verl_repro.cli", "verl_repro.config", "verl_repro.info", "verl_repro.run_metrics"}


def test_the_package_root_holds_only_what_a_user_meets_first():
    at_root = {name for name, path in MODULES.items() if path.parent == PACKAGE}
    assert at_root == ROOT_MODULES


def test_algorithms_import_only_torch_and_the_standard_library():
    def allowed(name: str, imported: str) -> bool:
        top = imported.split(".")[0]
        oracle_extra = ("scipy", "numpy") if name == "verl_repro.algorithms.reference" else ()
        return _in(imported, "verl_repro.algorithms") or top in ("torch", *oracle_extra, *sys.stdlib_module_names)

    offenders = {
        name: sorted(imported for imported in _imports(name) if not allowed(name, imported))
        for name in MODULES if _in(name, "verl_repro.algorithms")
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_plugin_plumbing_imports_no_other_part_of_the_package():
    offenders = {
        name: sorted(edge for edge in _package_edges(name) if not _in(edge, "verl_repro.plugin"))
        for name in MODULES if _in(name, "verl_repro.plugin")
    }
    assert not {name: found for name, found in offenders.items() if found}


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("verl_repro.verl_ext", "verl_repro.cpu"),
        ("verl_repro.analysis", "verl_repro.verl_ext"),
        ("verl_repro.evaluation", "verl_repro.verl_ext"),
        ("verl_repro.scoring", "verl_repro.verl_ext"),
        ("verl_repro.scoring", "verl"),
        ("verl_repro.gradients", "verl_repro.verl_ext"),
        ("verl_repro.gradients", "verl"),
        ("verl_repro.models", "verl_repro.verl_ext"),
        ("verl_repro.models", "verl"),
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
