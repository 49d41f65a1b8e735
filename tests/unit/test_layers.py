"""The package layers and the absence of import cycles, read from the source with `ast`
(nothing is imported, so a module that fails to import is still checked).

Bottom up: `audit` and `policies` import nothing of ours; the release gate (`sandbox.gate`) may
import them; the sandbox runtime (the rest of `sandbox`) may import them too, but not the gate;
`console` may import anything. Every import counts: module level, inside functions, and under
`TYPE_CHECKING`, since a cycle through any of them still ties the modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("audit", "policies", "sandbox", "console")

#: Which layers each layer may import (its own included).
ALLOWED: dict[str, frozenset[str]] = {
    "audit": frozenset({"audit"}),
    "policies": frozenset({"policies"}),
    "sandbox.gate": frozenset({"sandbox.gate", "audit", "policies"}),
    "sandbox": frozenset({"sandbox", "audit", "policies"}),
    "console": frozenset({"console", "sandbox", "sandbox.gate", "audit", "policies"}),
}

#: Cycles tolerated for now, each as the modules of one strongly connected component; none
#: since the CLI's sub-command modules stopped importing its root group.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing `name` runs: itself, or its nearest ancestor that is
    a module (`from pkg import function` imports `pkg`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                yield Import(module, target, node.lineno)


def _graph() -> tuple[dict[str, Path], list[Import]]:
    modules = _sources()
    edges = list(dict.fromkeys(edge for module, path in modules.items()
                               for edge in _imports(module, path, modules)))
    return modules, edges


def layer_of(module: str) -> str:
    if module == "sandbox.gate" or module.startswith("sandbox.gate."):
        return "sandbox.gate"
    return module.split(".")[0]


def strongly_connected(nodes: list[str], edges: list[Import]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module are cycles."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        successors[edge.importer].append(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def shortest_cycle(component: list[str], edges: list[Import]) -> list[Import]:
    """One shortest cycle inside a strongly connected component, as the imports that make it:
    enough to see where to cut, however large the component."""
    inside = set(component)
    successors: dict[str, list[Import]] = {node: [] for node in component}
    for edge in edges:
        if edge.importer in inside and edge.imported in inside:
            successors[edge.importer].append(edge)
    best: list[Import] = []
    for start in component:
        came_by: dict[str, Import] = {}
        frontier = [start]
        while frontier and start not in came_by:
            following = []
            for node in frontier:
                for edge in successors[node]:
                    if edge.imported not in came_by:
                        came_by[edge.imported] = edge
                        following.append(edge.imported)
            frontier = following
        path = [came_by[start]]
        while path[0].importer != start:
            path.insert(0, came_by[path[0].importer])
        if not best or len(path) < len(best):
            best = path
    return best


def _describe(component: list[str], edges: list[Import]) -> str:
    cycle = shortest_cycle(component, edges)
    steps = " -> ".join(f"{e.importer} (line {e.line})" for e in cycle)
    return (f"{steps} -> {cycle[0].importer}\n"
            f"      (all {len(component)} modules tied together: {', '.join(component)})")


def test_no_import_cycles() -> None:
    modules, edges = _graph()
    cycles = [c for c in strongly_connected(sorted(modules), edges)
              if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles:\n  " + "\n  ".join(_describe(c, edges) for c in cycles)


def test_known_cycles_still_exist() -> None:
    """An allow-listed cycle that is gone must leave the list, so it cannot come back."""
    modules, edges = _graph()
    found = {frozenset(c) for c in strongly_connected(sorted(modules), edges)}
    assert not KNOWN_CYCLES - found, f"no longer cycles, drop them: {KNOWN_CYCLES - found}"


def test_no_upward_imports() -> None:
    _modules, edges = _graph()
    upward = [f"{e.importer} (line {e.line}) imports {e.imported}: layer {layer_of(e.importer)}"
              f" may import only {sorted(ALLOWED[layer_of(e.importer)])}"
              for e in edges if layer_of(e.imported) not in ALLOWED[layer_of(e.importer)]]
    assert not upward, "imports against the layers:\n  " + "\n  ".join(upward)


def test_the_walk_sees_the_imports() -> None:
    """Guard the checker itself: known edges of each kind are found."""
    modules, edges = _graph()
    found = {(e.importer, e.imported) for e in edges}
    assert {"audit", "policies", "sandbox", "sandbox.gate", "console"} <= set(modules)
    assert ("console.app", "console.core") in found  # module level
    assert ("sandbox.gate.checks", "sandbox.gate.errors") in found  # from-import of a name
    assert ("console.app", "console.web.auth") in found  # inside a function


def test_the_cycle_finder_names_a_cycle() -> None:
    edges = [Import("a", "b", 1), Import("b", "c", 1), Import("c", "a", 1), Import("c", "d", 1)]
    assert strongly_connected(["a", "b", "c", "d"], edges) == [["a", "b", "c"]]
    edges.append(Import("b", "a", 2))
    assert [(e.importer, e.imported) for e in shortest_cycle(["a", "b", "c"], edges)] == [
        ("a", "b"), ("b", "a")]
