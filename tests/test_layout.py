"""The package's layers, read from its own imports (no module is imported here).

Data flows one way (see the package docstring): core → tasks → locate → train/edit →
measure → run → view. These tests parse ``mechunlearn_nb/*.py`` with :mod:`ast` and check
the rules that keep it so: no import cycle, figures and widgets only in the view layer
(``plots``, ``widgets``), and nothing below the view layer importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mechunlearn_nb"
#: third-party libraries that draw or display: only the view layer imports them
VIEW_LIBRARIES = ("matplotlib", "seaborn", "ipywidgets", "IPython", "circuitsvis")
VIEW = {"plots", "widgets"}
#: modules that may import the view layer: the command line and the HTML report sit above it
ABOVE_VIEW = {"__main__", "report"}
#: the core: loading, reading, formatting, scoring, positions, writing; it imports nothing above it
CORE = {"models", "data", "prompts", "scoring", "positions", "io", "checks"}
#: the run layer: grids, notebooks, the plan a grid is tested against, expected values; only it, the view layer and
#: the command line import it
RUN = {"grid", "cluster", "sizing", "runner", "report", "expected", "plan", "reanalysis", "__main__", "lab",
       "sweep"}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, package: set[str]) -> tuple[set[str], set[str]]:
    """(package modules, top-level third-party names) a module imports, at module level or inside functions."""
    inside, outside = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mechunlearn_nb":
                    inside.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    outside.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] != "mechunlearn_nb":
                outside.add(node.module.split(".")[0])
                continue
            parts = (node.module or "").split(".")
            if node.level == 0:
                parts = parts[1:]  # "from mechunlearn_nb.x import ..." / "from mechunlearn_nb import x"
            if parts and parts[0]:
                inside.add(parts[0])
            else:  # "from . import a, b": the names are modules
                inside |= {a.name for a in node.names if a.name in package}
    return inside, outside


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    trees = _modules()
    package = set(trees)
    return {name: _imports(tree, package) for name, tree in trees.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_is_read():
    # the reader sees the imports it checks: a module with known imports, relative and absolute
    graph = {name: _imports(tree, set(_modules())) for name, tree in _modules().items()}
    assert {"patching", "positions", "scoring"} <= graph["tracing"][0]
    assert "torch" in graph["tracing"][1] and "matplotlib" in graph["plots"][1]
    tree = ast.parse("from . import data as _data\nfrom .io import slug\nimport mechunlearn_nb.models\n"
                     "def f():\n    from mechunlearn_nb import tasks\n    import matplotlib.pyplot as plt\n")
    assert _imports(tree, {"data", "io", "models", "tasks"}) == ({"data", "io", "models", "tasks"}, {"matplotlib"})
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle(graph):
    edges = {name: inside - {name, "__init__"} for name, (inside, _) in graph.items() if name != "__init__"}
    cycle = _cycle(edges)
    assert cycle is None, (f"Import cycle among the package's modules: {' -> '.join(cycle)}. Fix: move what both "
                           "need into a lower module (e.g. positions, scoring, io), or the figure into plots/widgets.")


def test_only_the_view_layer_draws(graph):
    found = {(name, lib) for name, (_, outside) in graph.items() if name not in VIEW for lib in outside
             if lib in VIEW_LIBRARIES}
    assert not found, (f"{sorted(found)}: a computation module imports a drawing or display library. Fix: move the figure to "
                     "plots.py or the explorer to widgets.py; computation modules return tables.")


def test_nothing_below_the_view_layer_imports_it(graph):
    bad = sorted((name, sorted(inside & VIEW)) for name, (inside, _) in graph.items()
                 if name not in VIEW | ABOVE_VIEW and inside & VIEW)
    assert not bad, (f"{bad} import the view layer (plots / widgets). Fix: return a table and let the notebook, "
                     "plots or widgets draw it.")


def test_the_core_imports_nothing_above_it(graph):
    bad = sorted((name, sorted(inside - CORE - {"__init__"})) for name, (inside, _) in graph.items()
                 if name in CORE and inside - CORE - {"__init__"})
    assert not bad, f"{bad}: a core module imports a higher layer. Fix: move the shared code down into the core."


#: the layers, lowest first (the package docstring's list); a module imports only its own layer and those before it
LAYERS = [
    ("core", CORE),
    ("tasks", {"tasks"}),
    ("locate", {"tracing", "patching", "probing", "localization", "registry"}),
    ("train", {"train"}),
    ("use the loop", {"editing", "attacks", "masking"}),
    ("measure", {"evaluation", "latent", "statistics", "tuning"}),
    ("run", RUN),
    ("view", VIEW),
]


def test_every_module_has_a_layer_and_imports_go_downwards(graph):
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    missing = sorted(set(graph) - set(rank) - {"__init__"})
    assert not missing, f"{missing} belong to no layer. Fix: add each to LAYERS here and to the package docstring's list."
    upward = sorted((name, sorted(m for m in inside if m in rank and rank[m] > rank[name]))
                    for name, (inside, _) in graph.items() if name in rank
                    and name not in ABOVE_VIEW and any(m in rank and rank[m] > rank[name] for m in inside))
    assert not upward, f"{upward}: a module imports a higher layer. Fix: move the shared code down."


def test_only_the_run_layer_and_above_import_it(graph):
    assert RUN <= set(graph), f"{sorted(RUN - set(graph))} listed in RUN but not in the package. Fix: update RUN."
    bad = sorted((name, sorted(inside & RUN)) for name, (inside, _) in graph.items()
                 if name not in RUN | VIEW | ABOVE_VIEW | {"__init__"} and inside & RUN)
    assert not bad, (f"{bad} import the run layer (grid, runner, plan, ...). Fix: move what they need down into "
                     "the measure layer or below.")
