"""The shape of the code, checked: small modules, no import cycle, one home for the environment.

These read the source (``ast``), import nothing of zprokit's, and cost milliseconds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zprokit"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 700
MAX_NODE_LINES = 460  # Main and Window: their public face, carrying out what their parts decide


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """The zprokit modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks left out,
    imports inside functions counted: they run too)."""
    tree = ast.parse(path.read_text())
    known = {module_name(p) for p in MODULES}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if target.split(".")[0] == "zprokit":
                for alias in node.names:  # `from . import protocol` names a module; else the names are target's
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "zprokit")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known} - {module_name(path)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_700_lines(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"


@pytest.mark.parametrize("module, cls", [("main.py", "Main"), ("window.py", "Window")])
def test_the_nodes_are_small(module: str, cls: str):
    tree = ast.parse((PACKAGE / module).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    lines = (node.end_lineno or 0) - node.lineno + 1
    assert lines <= MAX_NODE_LINES, f"{cls} has {lines} lines"


def test_nothing_imports_in_a_circle():
    graph = {module_name(p): runtime_imports(p) for p in MODULES}
    # A package's __init__ re-exporting its submodules is not a cycle with them: they import
    # siblings, never the package's own __init__ (checked below), so drop package -> child edges.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not d.startswith(name + ".")}
    cycles = []
    state: dict[str, int] = {}

    def walk(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, stack + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The check above can fail: two modules that import each other are reported."""
    pkg = tmp_path / "zprokit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", sorted(pkg.rglob("*.py")))
    with pytest.raises(AssertionError, match="zprokit.a -> zprokit.b -> zprokit.a"):
        test_nothing_imports_in_a_circle()


def test_the_environment_is_named_in_one_place():
    """Every ZPROKIT_* variable is spelled out in zprokit/_env.py only."""
    spelled = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in MODULES if path.name != "_env.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("ZPROKIT_")
    ]
    assert spelled == []


def test_the_protocol_and_the_session_rules_do_no_io():
    forbidden = {"zmq", "socket", "threading", "selectors", "asyncio"}
    for path in [PACKAGE / "protocol.py", *sorted((PACKAGE / "session").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert imported & forbidden == set(), f"{path.name} imports {imported & forbidden}"
        zprokit_deps = runtime_imports(path)
        assert zprokit_deps <= {"zprokit.protocol", "zprokit.errors", "zprokit.events"} | {
            module_name(p) for p in (PACKAGE / "session").glob("*.py")} | {"zprokit.session"}, zprokit_deps
