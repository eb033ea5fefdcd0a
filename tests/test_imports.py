"""Every aam module imports on its own, and no two modules import each other, even from inside a
function: the layers import strictly downwards (config -> data -> models -> training ->
distributed -> cli)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

AAM = Path(__file__).resolve().parents[1] / "aam"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the aam package."""
    out = {}
    for path in sorted(AAM.rglob("*.py")):
        parts = list(path.relative_to(AAM.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The aam modules `path` imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("aam"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"  # `from aam.data import _split` names a module
                found.add(submodule if submodule in known else node.module)
    return {m for m in found if m in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle_between_aam_modules():
    known = module_files()
    graph = {name: imported_modules(path, known) - {name} for name, path in known.items()}
    assert "aam.models.layers" in graph["aam.models.categorical"]  # the graph does see imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "aam" or m.startswith("aam.")]:
        del sys.modules[loaded]  # each module starts from a fresh aam (third-party modules stay loaded)
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = list(module_files())
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], capture_output=True, text=True,
                            timeout=300, cwd=AAM.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed.items())
