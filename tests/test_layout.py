"""The package's layout holds: no import circle, every import pointing down (io never imports a
tool, the graph module reads no data), importing the tools loads none of their libraries, and no
function is over 120 lines without its docstring."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import p2g_dask

PACKAGE = Path(p2g_dask.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its code, functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import module` imports the module; `from module import name` the module.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "p2g_dask":
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_layout__no_import_circle():
    graph = _imports()
    # Package faces (__init__ files) hand names on lazily; the modules they name are below them.
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_layout__io_imports_no_tool_and_the_graph_module_reads_no_data():
    graph = _imports()
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if m.startswith("p2g_dask.io") and t.startswith(("p2g_dask.tl", "p2g_dask.pl", "p2g_dask.cli",
                                                                 "p2g_dask.pipeline", "p2g_dask.genome"))]
    assert not upward, upward
    assert not {t for t in graph["p2g_dask._graph"] if t.startswith("p2g_dask.io")}
    # The engine serves the tools: it imports none of them.
    engine_up = [(m, t) for m, targets in graph.items() for t in targets
                 if m.startswith("p2g_dask.tl.engine") and t.startswith("p2g_dask.tl.") and
                 not t.startswith("p2g_dask.tl.engine")]
    assert not engine_up, engine_up


def test_layout__tools_import_only_what_they_use():
    code = ("import sys, p2g_dask.tl, p2g_dask.io; "
            "print(sorted(m for m in ('sklearn', 'igraph', 'matplotlib', 'pyranges') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


#: The project's bound on a function's length, its docstring left out (issue #29).
MAX_FUNCTION_LINES = 120


def _lines_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the function's last line, less its docstring's lines."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_layout__no_function_over_120_lines_without_its_docstring():
    sample = ast.parse('@decorated\ndef f(x):\n    """One.\n\n    Two.\n    """\n    y = x\n    return y\n').body[0]
    assert _lines_without_docstring(sample) == 3  # def, y = x, return y: decorator and docstring not counted
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _lines_without_docstring(node)
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines without their docstring (split them into "
                          f"helpers with one job each): {too_long}")
