"""No import circle in the package: every module imports on its own in a fresh interpreter, and the graph of
imports between cai's modules (those inside functions included, which a fresh import does not run) has no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cai

SRC = Path(cai.__file__).parent.parent
ROOT = "cai"  # the root package: every module's parent, imported before any of them


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        out[".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The cai modules ``path`` imports anywhere in its code (``from cai.x import y`` names cai.x.y when that is a
    module); the root package is left out."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return found - {ROOT}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == [], "modules that import each other (directly or round a circle)"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # `python -m cai` (__main__) runs the CLI, so it is left out. One interpreter; before each module every cai
    # module is dropped, so each starts from nothing of cai's (torch and the other libraries stay loaded: they
    # are not ours and take seconds to import)
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {[m for m in sorted(_modules()) if not m.endswith('.__main__')]!r}:\n"
        "    for m in [m for m in sys.modules if m == 'cai' or m.startswith('cai.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
