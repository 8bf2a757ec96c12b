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


def _public_constants(body: list[ast.stmt]) -> list[tuple[ast.stmt, str]]:
    out = []
    for node in body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        out += [
            (node, t.id)
            for t in targets
            if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("_")
        ]
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_public_constant_has_a_docstring(path):
    body = ast.parse(path.read_text()).body
    following = dict(itertools.pairwise(body))
    missing = [name for node, name in _public_constants(body) if not _is_str(following.get(node, node))]
    assert not missing, f"{path.name}: no docstring after {missing}"


def test_the_constant_check_sees_a_missing_docstring():
    body = ast.parse('A = 1\n"""A."""\nB: int = 2\n_c = 3\nD = 4\n').body
    following = dict(itertools.pairwise(body))
    assert [name for node, name in _public_constants(body) if not _is_str(following.get(node, node))] == [
        "B",
        "D",
    ]
