"""The modules of ``pillars.*`` import each other without a cycle, counting imports inside functions, and
the folders import each other only in the direction the loop runs.

An import moved into a function to dodge a cycle is still the cycle: the graph below is read from
the source (every ``import`` statement anywhere in a module), not from what Python happens to load.

The rules between folders (:data:`ALLOWED`): tasks -> components; serving -> components; pipelines ->
serving, components; console -> pipelines, components. Only the KFP wrappers import ``kfp``
(:data:`KFP_WRAPPERS`), and training never imports the data step.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("components", "pipelines", "serving", "console", "tasks")
ALLOWED = {
    "components": {"components"},
    "tasks": {"tasks", "components"},
    "serving": {"serving", "components"},
    "pipelines": {"pipelines", "serving", "components"},
    "console": {"console", "pipelines", "components"},
}
"""Which folders each folder's modules may import."""
KFP_WRAPPERS = {"pillars.components.ops", "pillars.components.optimize.op", "pillars.pipelines.training",
                "pillars.pipelines.optimize", "pillars.pipelines.compile", "pillars.pipelines.local.runner",
                "pillars.pipelines.submit"}
"""The modules that may import ``kfp``: the components' wrappers, the pipelines built from them, the local
runner, and the one client of a cluster's KFP API."""


def _modules() -> dict[str, Path]:
    """``pillars.<folder>.<module>`` -> source file, for every module the distribution installs."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("pillars", *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imported_names(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def import_graph() -> dict[str, set[str]]:
    """Edges module -> module among ``pillars.*`` modules, from every import statement in each module."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    base = ".".join([*package, node.module])
                # `from pillars.components import kube` imports the module pillars.components.deploy.kube
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
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
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # ops imports each step inside its component bodies (KFP ships the body as source text)
    assert "pillars.components.training.train" in graph["pillars.components.ops"]
    assert "pillars.components.deploy.kube" in graph["pillars.components.deploy.inference_service"]  # `from pillars.components import kube`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_pillars_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_folders_import_each_other_only_in_the_direction_the_loop_runs():
    wrong = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                   if target.split(".")[1] not in ALLOWED[module.split(".")[1]])
    assert not wrong, wrong


def test_training_never_imports_the_data_step():
    """Training reads prepared splits through their format (:mod:`pillars.components.data.splits`); the
    data step (:mod:`pillars.components.data.prepare`) is a pipeline step of its own."""
    graph = import_graph()
    training = [name for name in graph if name.startswith("pillars.components.training")]
    assert training
    assert not [name for name in training if "pillars.components.data.prepare" in graph[name]]


def test_only_the_kfp_wrappers_import_kfp():
    modules = _modules()
    assert KFP_WRAPPERS <= modules.keys()
    importers = {name for name, path in modules.items() if "kfp" in _imported_names(path)}
    assert importers <= KFP_WRAPPERS, sorted(importers - KFP_WRAPPERS)

