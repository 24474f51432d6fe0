"""The package's layout holds: no import cycles, Beam only where the Beam graphs and the runner are.

Read from the source (ast), not by importing: module-level imports only, the ones that run when a module is
loaded (imports inside functions are lazy on purpose and may go anywhere).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unicurate"
BEAM_FREE = ("download", "filters", "synthesis", "models", "manifests")  # plain code that Beam graphs wrap


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _load_time_imports(node: ast.AST):
    """Import statements that run when the module is loaded: not in functions, not under ``if TYPE_CHECKING``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (i for c in child.orelse for i in _load_time_imports(ast.Module([c], [])))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        else:
            yield from _load_time_imports(child)


def imports_of(module: str) -> set[str]:
    """Modules (dotted names, any package) that loading ``module`` imports; a ``from package import name`` counts
    as the submodule ``package.name`` when there is one, else as ``package``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _load_time_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in MODULES else base)
    return out


GRAPH = {m: {i for i in imports_of(m) if i in MODULES and i != m} for m in MODULES}


def _cycles() -> list[list[str]]:
    """Every import cycle, each once (Tarjan's strongly connected components, then one path around each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return [_path_around(comp) for comp in components]


def _path_around(comp: list[str]) -> list[str]:
    """One cycle through the first module of a strongly connected component, for the failure message."""
    members, start = set(comp), comp[0]
    parents = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(GRAPH[v] & members):
            if w == start:
                path = [v]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return list(reversed(path)) + [start]
            if w not in parents:
                parents[w] = v
                queue.append(w)
    return comp


def _beam_chain(module: str) -> list[str] | None:
    """The module-level import chain from ``module`` to apache_beam, or None when loading it never loads Beam."""
    parents = {module: None}
    queue = [module]
    while queue:
        v = queue.pop(0)
        if any(i == "apache_beam" or i.startswith("apache_beam.") for i in imports_of(v)):
            path = [v]
            while parents[path[-1]] is not None:
                path.append(parents[path[-1]])
            return list(reversed(path)) + ["apache_beam"]
        for w in sorted(GRAPH[v]):
            if w not in parents:
                parents[w] = v
                queue.append(w)
    return None


def test_the_graph_is_read():
    # the reader sees this package's known edges (a reader that found nothing would pass every test below)
    assert "unicurate.pipelines.common" in GRAPH["unicurate.pipelines.curate"]
    assert "unicurate.run.options" in GRAPH["unicurate.run.execute"]


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", BEAM_FREE)
def test_plain_code_never_loads_beam(package):
    """Filters, models, synthesis, downloads and manifests run in a unit test or a notebook without Beam
    (Beam's FileSystems imported inside a function, when a path is read, is fine)."""
    chains = [c for m in MODULES if m == f"unicurate.{package}" or m.startswith(f"unicurate.{package}.")
              if (c := _beam_chain(m))]
    assert not chains, "loads apache_beam at import time:\n" + "\n".join(" -> ".join(c) for c in chains)


def test_every_pipelines_module_is_a_beam_graph():
    """pipelines/ holds Beam graphs only: orchestration is in run/, plain code in the packages above."""
    graph_modules = [m for m, p in MODULES.items() if m.startswith("unicurate.pipelines.")]
    assert graph_modules
    plain = [m for m in graph_modules
             if not any(i == "apache_beam" or i.startswith("apache_beam.") for i in imports_of(m))]
    assert not plain, f"not Beam graph modules (move them out of unicurate/pipelines): {plain}"


def test_the_graphs_do_not_depend_on_the_runner():
    """run/ drives pipelines/, never the other way round: a graph module imports nothing from unicurate.run,
    even inside a function (so the two packages do not form a cycle either)."""
    import ast

    offenders = []
    for module, path in MODULES.items():
        if module.startswith("unicurate.pipelines."):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{module}: {n}" for n in names if n == "unicurate.run" or n.startswith("unicurate.run.")]
    assert not offenders, offenders


def test_every_recipe_kind_has_a_pipeline():
    from unicurate.config import RECIPES
    from unicurate.run.execute import PIPELINES

    assert list(PIPELINES) == list(RECIPES)
    assert all(name == p.name for name, p in PIPELINES.items())
