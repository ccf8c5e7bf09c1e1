"""The shape of the package: small files, imports that point one way, no import circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "lifelab"
MAX_LINES = 500
# part -> the parts it may import (arrows point down: cli -> searches -> trainables -> learners
# -> platform; analysis -> platform; api -> searches, analysis)
ALLOWED = {
    "platform": {"platform", "errors"},
    "learners": {"platform", "learners", "errors"},
    "trainables": {"platform", "learners", "trainables", "errors"},
    "searches": {"platform", "learners", "trainables", "searches", "analysis", "errors"},
    "analysis": {"platform", "analysis", "trainables", "errors"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lifelab modules `name` names in any import statement (module level or inside a
    function: a lazy import closes a circle all the same)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n in known and n != name}
    return found


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_file_is_longer_than_500_lines(name):
    lines = modules()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{modules()[name]} has {lines} lines: split it by concern"


def test_no_import_circle():
    state: dict[str, int] = {}          # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            visit(start, [start])


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.count(".") >= 2))
def test_imports_point_down(name):
    part = name.split(".")[1]
    if part not in ALLOWED:
        return
    for target in GRAPH[name]:
        other = target.split(".")[1] if target.count(".") >= 1 else target
        assert other in ALLOWED[part], f"{name} imports {target}: {part} may not import {other}"
    source = modules()[name].read_text()
    if part == "learners":
        assert "import ray" not in source and "from ray" not in source, \
            f"{name} imports Ray: learners stay plain PyTorch"
