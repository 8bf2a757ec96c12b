"""The package's layers (docs/ARCHITECTURE.md): a module may import only the layers below it,
neither statically, nor by a module name in a string (``importlib.import_module``, ``__import__``,
a ``"module:Class"`` table), and no chain of imports, at module level or inside functions, leads
back to where it started."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "nonlocalnet"

# what each top-level part of the package may import (besides itself and the leaf utilities)
LEAVES = {"__init__", "atomic", "errors"}
ALLOWED: dict[str, set[str]] = {
    "ops": set(),
    "layers": {"ops"},
    "models": {"layers", "ops"},
    "data": set(),
    "denoise": {"ops"},
    "viz": {"layers", "ops"},
    "engine": {"data", "models", "layers", "ops", "viz"},
    "tasks": {"engine", "detection", "data", "models", "layers", "ops", "viz"},
    "detection": {"engine", "data", "models", "layers", "ops", "viz"},
    "demo": {"engine", "tasks", "detection", "data", "models", "layers", "ops", "viz"},
}
_EVERYTHING = {"engine", "tasks", "demo", "data", "models", "layers", "ops", "viz", "denoise", "detection"}
ALLOWED["cli_video"] = _EVERYTHING
ALLOWED["cli_detection"] = _EVERYTHING | {"cli_video"}
ALLOWED["cli"] = _EVERYTHING | {"cli_video", "cli_detection"}

_MODULE_STRING = re.compile(r"nonlocalnet(\.\w+)+(:\w+(\.\w+)*)?")


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _existing(name: str, modules: set[str]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _is_package(module: str, source: dict[str, str]) -> bool:
    return any(m.startswith(module + ".") for m in source)


def _string_targets(tree: ast.AST) -> list[str]:
    """String constants that name a nonlocalnet module (an argument of ``import_module`` or
    ``__import__``, a ``"module:Class"`` entry, ...); logger names are not imports."""
    loggers = {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger"
    }
    return [
        node.value.partition(":")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _MODULE_STRING.fullmatch(node.value)
        and id(node) not in loggers
    ]


def import_graph(
    source: dict[str, str], *, with_type_only: bool = True
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``source`` maps a module name to its code. Returns (imports, strings): for each module,
    the nonlocalnet modules it imports anywhere in its code (module level and inside functions;
    ``from pkg import sub`` counts as ``pkg.sub`` when that is a module; under ``if
    TYPE_CHECKING:`` only ``with_type_only``, as those never run), and those it names in a
    string (an import by name at run time)."""
    modules = set(source)
    imports: dict[str, set[str]] = {}
    strings: dict[str, set[str]] = {}
    for module, code in source.items():
        tree = ast.parse(code)
        package = module if _is_package(module, source) else module.rpartition(".")[0]
        found: set[str] = set()
        type_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in type_only and not with_type_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            found |= {t for t in (_existing(n, modules) for n in names) if t and t != module}
        imports[module] = found
        strings[module] = {t for t in (_existing(s, modules) for s in _string_targets(tree)) if t} - {module}
    return imports, strings


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _allowed(part: str) -> set[str]:
    if part in LEAVES:
        return LEAVES if part != "__init__" else {"layers", "models", "ops"} | LEAVES
    return ALLOWED[part] | LEAVES | {part}


def upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a layer the importer's may not
    import."""
    return {(m, t) for m, targets in graph.items() for t in targets if _layer(t) not in _allowed(_layer(m))}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The modules of each import cycle: the strongly connected components of ``graph`` with
    more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest closed path (breadth first) from the component's first module back to it."""
    start = min(component)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    path = [v]
                    while (p := parent[path[-1]]) is not None:
                        path.append(p)
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not a cycle")


def _package_graph(*, with_type_only: bool = True) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    sources = {_module_name(p): p.read_text() for p in sorted(SRC.rglob("*.py"))}
    return import_graph(sources, with_type_only=with_type_only)


IMPORTS, STRINGS = _package_graph()


def test_every_part_of_the_package_is_in_the_layer_table():
    parts = {_layer(m) for m in IMPORTS}
    assert parts - LEAVES <= set(ALLOWED), sorted(parts - LEAVES - set(ALLOWED))


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_no_upward_import(module):
    wrong = upward({module: IMPORTS[module]})
    allowed = sorted(_allowed(_layer(module)))
    assert not wrong, f"{module} imports {sorted(t for _, t in wrong)}; it may import {allowed}"


def test_no_module_imports_an_upper_layer_by_name():
    """``importlib.import_module("nonlocalnet.x")``, ``__import__`` or a ``"module:Class"`` table
    is an import too."""
    found = upward(STRINGS)
    assert not found, f"imports by name going up the layers: {sorted(found)}"


def test_no_import_cycle():
    """At run time (imports under ``if TYPE_CHECKING:`` never run; they still count as layer
    crossings above)."""
    imports, strings = _package_graph(with_type_only=False)
    graph = {m: imports[m] | strings[m] for m in imports}
    found = cycles(graph)
    paths = [" -> ".join(_closed_path(graph, set(c))) for c in found]
    assert not paths, f"import cycles: {paths}"


def test_the_checks_see_upward_imports_by_any_means_and_cycles():
    source = {
        "nonlocalnet": "",
        "nonlocalnet.ops": "",
        "nonlocalnet.ops.pairwise": "import nonlocalnet.layers.block\n",
        "nonlocalnet.layers": "from nonlocalnet.layers import block\n",
        "nonlocalnet.layers.block": (
            "import logging\nlog = logging.getLogger('nonlocalnet.engine')\n"
            "def f():\n    from nonlocalnet.ops import pairwise\n"
            "    return importlib.import_module('nonlocalnet.engine.train')\n"
        ),
        "nonlocalnet.engine": "",
        "nonlocalnet.engine.train": "TABLE = {'a': 'nonlocalnet.demo.run:Demo'}\nfrom . import task\n",
        "nonlocalnet.engine.task": "__import__('nonlocalnet.engine.train')\n",
        "nonlocalnet.demo": "",
        "nonlocalnet.demo.run": "",
    }
    imports, strings = import_graph(source)
    assert imports["nonlocalnet.layers"] == {"nonlocalnet.layers.block"}
    assert imports["nonlocalnet.engine.train"] == {"nonlocalnet.engine.task"}
    assert upward(imports) == {("nonlocalnet.ops.pairwise", "nonlocalnet.layers.block")}
    assert upward(strings) == {
        ("nonlocalnet.layers.block", "nonlocalnet.engine.train"),
        ("nonlocalnet.engine.train", "nonlocalnet.demo.run"),
    }
    graph = {m: imports[m] | strings[m] for m in imports}
    assert cycles(graph) == {
        frozenset({"nonlocalnet.ops.pairwise", "nonlocalnet.layers.block"}),
        frozenset({"nonlocalnet.engine.train", "nonlocalnet.engine.task"}),
    }
    path = _closed_path(graph, {"nonlocalnet.ops.pairwise", "nonlocalnet.layers.block"})
    assert path == ["nonlocalnet.layers.block", "nonlocalnet.ops.pairwise", "nonlocalnet.layers.block"]


def test_the_library_raises_its_own_error_types():
    """Errors raised on purpose derive from NonLocalNetError (the CLI prints those; anything else
    is a bug), so no module raises a bare built-in ValueError/TypeError/RuntimeError/OSError."""
    bare = re.compile(r"raise (ValueError|TypeError|RuntimeError|FileNotFoundError|OSError)\(")
    found = [
        f"{p.relative_to(SRC)}:{n}"
        for p in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not found, found


def test_importing_the_engine_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, nonlocalnet.engine, nonlocalnet.data, nonlocalnet.models\n"
    code += "print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
