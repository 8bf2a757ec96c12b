"""Every module-level constant of ops and layers has its own docstring right after it, and no
string literal stands orphaned after another (a docstring that lost its constant)."""

import ast
import itertools
from pathlib import Path

import pytest

import nonlocalnet

SRC = Path(nonlocalnet.__file__).parent
FILES = sorted((SRC / "ops").glob("*.py")) + sorted((SRC / "layers").glob("*.py"))


def _is_str(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_orphan_docstrings(path):
    body = ast.parse(path.read_text()).body
    for prev, node in itertools.pairwise(body):
        assert not (_is_str(prev) and _is_str(node)), f"{path.name}:{node.lineno}: a string follows a string"


def test_modes_docstring_follows_modes():
    body = ast.parse((SRC / "ops" / "pairwise.py").read_text()).body
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and _is_str(nxt):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            docs[target.id] = nxt.value.value
    assert "four instantiations" in docs["MODES"]
    assert "softmax" in docs["SOFTMAX_MODES"]
