import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _deterministic():
    """Every test starts from the same global seed and default dtype."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def force_query_groups(monkeypatch):
    """``force(threads)``: ``"fused"`` sees ``threads`` intra-op threads and splits the queries
    into groups at test sizes too (no minimum rows per group); undone after the test."""
    from nonlocalnet.ops import dispatch, pairwise

    def force(threads: int) -> None:
        monkeypatch.setattr(dispatch, "_GROUP_MIN_ROWS", 1)
        monkeypatch.setattr(pairwise, "_threads", torch.compiler.assume_constant_result(lambda: threads))

    return force
