"""The import structure, read from the source: layers point down, no package loops, only services read
catalog rows, and every deferred import is one of those listed in :mod:`protodb.lazy`."""

from __future__ import annotations

import ast
import collections
import subprocess
import sys
from pathlib import Path

import pytest

from protodb.lazy import DEFERRED, HEAVY

ROOT = Path(__file__).resolve().parents[1]

#: Layers, deepest first: a module may import (at module level) only from its own layer or below.
LAYERS = [
    {"_version", "errors", "lazy", "paths", "names", "fileio", "hashing", "images", "device", "entities", "render",
     "subpatch", "vocabularies", "namelists", "thing_stuff", "runners", "planning", "logs"},
    {"catalog", "storage", "features", "speed"},
    {"stores"},
    {"sharing"},  # the row-level implementation behind services/sharing.py
    {"services"},
    {"models"},
    {"pipeline", "segment", "inspection"},
    {"distributed"},
    {"api", "__init__"},
    {"serve", "demo"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
#: Packages that may read or write catalog rows (SQLAlchemy, the ORM schema).
ROW_READERS = {"catalog", "stores", "services", "sharing"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cli":
        parts[0] = "protodb_cli"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage (``segment``), top-level module (``entities``) or ``cli``."""
    parts = module.split(".")
    if parts[0] == "protodb_cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "__init__"


def _sources() -> dict[str, ast.Module]:
    files = sorted(list((ROOT / "protodb").rglob("*.py")) + list((ROOT / "cli").rglob("*.py")))
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in files}


SOURCES = _sources()


def _resolve(module: str, names: list[str]) -> list[str]:
    """``from protodb import subpatch`` names module protodb.subpatch; ``from protodb.x import Y`` module x."""
    return [f"{module}.{n}" if f"{module}.{n}" in SOURCES else module for n in names] or [module]


def _imports(tree: ast.Module):
    """(module-level imports, function-level imports, lazy_import targets) of a module."""
    top, inner, lazy = [], [], []

    def visit(node, in_function: bool, type_checking: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, True, type_checking)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
                continue
            found = []
            if isinstance(child, ast.Import):
                found = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found = _resolve(child.module, [a.name for a in child.names]) if child.module.startswith("protodb") \
                    else [child.module]
            if found and not type_checking:
                (inner if in_function else top).extend(found)
            if isinstance(child, ast.Call) and getattr(child.func, "id", None) == "lazy_import" and child.args:
                lazy.append(ast.literal_eval(child.args[0]))
            visit(child, in_function, type_checking)

    visit(tree, False, False)
    return top, inner, lazy


IMPORTS = {m: _imports(t) for m, t in SOURCES.items()}


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in SOURCES} <= set(RANK), {_unit(m) for m in SOURCES} - set(RANK)


def test_module_level_imports_point_down():
    upward = [f"{m} -> {t}" for m, (top, _, _) in IMPORTS.items() for t in top
              if t.startswith("protodb") and RANK[_unit(t)] > RANK[_unit(m)]]
    assert upward == []


def test_no_loops_between_packages():
    graph = collections.defaultdict(set)
    for m, (top, _, _) in IMPORTS.items():
        for t in top:
            if t.startswith("protodb") and _unit(t) != _unit(m):
                graph[_unit(m)].add(_unit(t))

    def reaches(a: str, b: str, seen: set) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    graph = dict(graph)
    assert [f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b})] == []


def test_only_services_read_catalog_rows():
    readers = [f"{m} imports {t}" for m, (top, inner, _) in IMPORTS.items() for t in top + inner
               if (t.startswith("sqlalchemy") or t.startswith("protodb.catalog.schema"))
               and _unit(m) not in ROW_READERS]
    assert readers == []


def test_the_command_line_never_imports_the_ray_runners():
    assert [f"{m} -> {t}" for m, (top, inner, _) in IMPORTS.items() if m.startswith("protodb_cli")
            for t in top + inner if t.startswith("protodb.distributed")] == []


def test_deferred_imports_are_the_listed_ones():
    found: dict[str, set[str]] = collections.defaultdict(set)
    stray = []
    for m, (_, inner, lazy) in IMPORTS.items():
        for t in inner:
            if t.startswith("protodb"):
                found[m].add(t)
            elif t.split(".")[0] not in HEAVY:
                stray.append(f"{m} imports {t} inside a function")
        stray += [f"{m} lazy_import({t!r})" for t in lazy if t.split(".")[0] not in HEAVY and m != "protodb.lazy"]
    listed = {m: set(v) for m, v in DEFERRED.items()}
    assert stray == []
    assert dict(found) == listed  # nothing deferred that is not listed, nothing listed that is gone
    assert all(lib in HEAVY for v in DEFERRED.values() for lib in v.values())


def test_lazy_import_refuses_light_modules():
    from protodb.lazy import lazy_import

    with pytest.raises(ValueError, match="heavy libraries"):
        lazy_import("protodb.segment.run")
    assert lazy_import("numpy").__name__ == "numpy"


@pytest.mark.parametrize("command", [["--help"], ["ls", "--help"]])
def test_metadata_start_up_imports_no_heavy_library(command):
    """The command line's start-up path imports none of the heavy libraries (the metadata commands' own
    reads are covered by tests/test_overview.py)."""
    code = ("import sys; from protodb_cli.main import app\n"
            "try:\n    app(" + repr(command) + ")\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(sorted(HEAVY)) + "))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
