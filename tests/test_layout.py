"""The package layout keeps its dependencies pointing one way: no part of sparsedm imports one that imports it back.

A part is a subpackage (sparsedm.sparse, sparsedm.train, ...) or a module at the top (sparsedm.config). Every
import counts, also those inside functions, since a deferred import only hides a cycle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sparsedm"


def part_of(module: str) -> str | None:
    names = module.split(".")
    return ".".join(names[:2]) if names[0] == "sparsedm" and len(names) > 1 else None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        source = part_of(module) or "sparsedm"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                part = part_of(target)
                if part and part != source and source != "sparsedm":
                    graph.setdefault(source, set()).add(part)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_relative_imports():
    relative = [
        str(path.relative_to(ROOT.parent))
        for path in ROOT.rglob("*.py")
        if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(path.read_text())))
    ]
    assert not relative, f"use absolute imports (from sparsedm.x import y) in {relative}"


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_sparse_engine_knows_nothing_of_diffusion():
    assert import_graph().get("sparsedm.sparse", set()) <= {"sparsedm.errors"}
