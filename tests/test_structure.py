"""The shape of the house: small modules, arrows pointing down, stages side by side.

Read from the source (no import needed): every `import`/`from` in distillery/, including those
inside functions, is an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

CORE = REPO / "distillery"
STAGE_MODULES = ("ingest", "seed", "teacher", "label", "student", "bulk")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute, at any depth of the file."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def core_graph() -> dict[str, set[str]]:
    modules = core_modules()
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def stage_of(module: str) -> str | None:
    """The stage a core module belongs to (`distillery.bulk.ray` -> `bulk`), or None for shared machinery."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_MODULES else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("name,path", sorted(core_modules().items()))
def test_no_core_module_passes_the_line_limit(name, path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES}): split it by idea"


def test_core_imports_form_no_circle():
    cycle = find_cycle(core_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_core_never_imports_prefect():
    offenders = {name: sorted(m for m in imports(path) if m.split(".")[0] == "prefect")
                 for name, path in core_modules().items()}
    assert {n: m for n, m in offenders.items() if m} == {}


def test_no_stage_module_imports_another_stage():
    crossings = [(a, b) for a, targets in core_graph().items() for b in sorted(targets)
                 if stage_of(a) and stage_of(b) and stage_of(a) != stage_of(b)]
    assert crossings == [], f"stages import each other: {crossings}"


def test_every_stage_module_has_one_entry_point_and_a_typed_inputs_record():
    import importlib

    for stage in STAGE_MODULES:
        if stage == "bulk":  # bulk runs on a schedule over an open-ended source, not from upstream stages
            continue
        module = importlib.import_module(f"distillery.{stage}")
        assert callable(module.run) and isinstance(module.Inputs.reads, tuple), stage


# The checks themselves must be able to fail: each is run on a small made-up graph or file.

def test_the_circle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_are_found_inside_functions_and_relative(tmp_path, monkeypatch):
    fake = REPO / "distillery" / "_probe_for_structure_test.py"
    assert not fake.exists()
    source = "def f():\n    from distillery import label\n    import prefect\nfrom .teacher import run\n"
    tree_path = tmp_path / "distillery" / "student.py"
    tree_path.parent.mkdir()
    tree_path.write_text(source)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = imports(tree_path)
    assert {"distillery.label", "prefect", "distillery.teacher"} <= found
    assert stage_of("distillery.bulk.ray") == "bulk" and stage_of("distillery.answer") is None
