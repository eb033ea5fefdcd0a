"""Every aam module imports on its own, no two modules import each other, and the layers import
strictly downwards, even from inside a function:

    shared (aam/_files.py, _yaml.py, _ray_internals.py, errors.py, examples) -> config -> data ->
    models -> training -> baselines -> search -> distributed -> cli

A module may import its own layer and those to its left; another package's private module
(`aam.search._space_validate`) only from inside that package; and `aam.search` never imports
Ray or `aam.distributed` (it reads what a search left without a running Ray).
"""

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


# each module's layer: the first entry its dotted name starts with (longest first), left to right
LAYERS = ["shared", "aam.config", "aam.data", "aam.models", "aam.training", "aam.baselines", "aam.search",
          "aam.distributed", "aam.cli"]
SHARED = ["aam", "aam._files", "aam._yaml", "aam._ray_internals", "aam.errors", "aam.examples"]


def layer_of(module: str) -> int:
    for prefix in sorted(LAYERS[1:], key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS.index(prefix)
    if any(module == s or module.startswith(s + ".") for s in SHARED[1:]) or module == "aam":
        return 0
    raise AssertionError(f"{module}: no layer; add its package to LAYERS or SHARED in tests/test_imports.py")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer than the importer's, as 'importer -> imported'."""
    return sorted(f"{m} -> {o}" for m, imported in graph.items() for o in imported if layer_of(o) > layer_of(m))


def foreign_private_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of another package's private module (`aam.search._space_validate` from aam.distributed)."""
    out = []
    for module, imported in graph.items():
        for other in imported:
            package, _, name = other.rpartition(".")
            if name.startswith("_") and package != "aam" and not (module + ".").startswith(package + "."):
                out.append(f"{module} -> {other}")
    return sorted(out)


def test_layers_import_only_downwards():
    known = module_files()
    graph = {name: imported_modules(path, known) - {name} for name, path in known.items()}
    assert not upward_imports(graph), "a lower layer imports a higher one:\n" + "\n".join(upward_imports(graph))
    # the check itself: an import from a higher layer is caught, one from a lower layer is not
    assert upward_imports({"aam.data.convert": {"aam.training.loop"}}) == ["aam.data.convert -> aam.training.loop"]
    assert upward_imports({"aam.search.report": {"aam.distributed.train"}}) == [
        "aam.search.report -> aam.distributed.train"]
    assert upward_imports({"aam.cli.train": {"aam.distributed.train", "aam._files"}}) == []


def test_no_module_imports_another_packages_private_module():
    known = module_files()
    graph = {name: imported_modules(path, known) - {name} for name, path in known.items()}
    found = foreign_private_imports(graph)
    assert not found, "private modules imported from outside their package:\n" + "\n".join(found)
    assert foreign_private_imports({"aam.search.report": {"aam.search._space_validate"}}) == []
    assert foreign_private_imports({"aam.distributed.tune": {"aam.search._space_validate", "aam._files"}}) == [
        "aam.distributed.tune -> aam.search._space_validate"]


def test_the_search_package_never_imports_ray():
    for path in sorted((AAM / "search").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n == "ray" or n.startswith("ray.")], f"{path} imports {names}"
    # and at run time: reading an experiment or a space leaves Ray unloaded
    code = ("import sys, aam.search, aam.search.report, aam.search.space; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'aam.distributed'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=AAM.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = list(module_files())
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], capture_output=True, text=True,
                            timeout=300, cwd=AAM.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed.items())
