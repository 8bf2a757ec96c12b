"""The package's layers (docs/ARCHITECTURE.md): a module may import only the layers below it."""

from __future__ import annotations

import ast
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


def _imports(path: Path) -> set[str]:
    """The top-level parts of ``nonlocalnet`` that ``path`` imports statically."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "nonlocalnet":
                out.add(parts[1] if len(parts) > 1 else "__init__")
    return out


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_part_of_the_package_is_in_the_layer_table():
    parts = {_part(p) for p in SRC.rglob("*.py")}
    assert parts - LEAVES <= set(ALLOWED), sorted(parts - LEAVES - set(ALLOWED))


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_upward_import(path):
    part = _part(path)
    if part in LEAVES:
        allowed = LEAVES if part != "__init__" else {"layers", "models", "ops"} | LEAVES
    else:
        allowed = ALLOWED[part] | LEAVES
    wrong = _imports(path) - allowed - {part}
    where = f"{path.relative_to(SRC)} ({part})"
    assert not wrong, f"{where} imports {sorted(wrong)}; it may import {sorted(allowed)}"


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from nonlocalnet.engine import train\nimport nonlocalnet.demo.run\n")
    assert _imports(bad) == {"engine", "demo"}


def test_the_library_raises_its_own_error_types():
    """Errors raised on purpose derive from NonLocalNetError (the CLI prints those; anything else
    is a bug), so no module raises a bare built-in ValueError/TypeError/RuntimeError/OSError."""
    import re

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
