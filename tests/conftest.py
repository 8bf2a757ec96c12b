import sys
from pathlib import Path

import pytest
import torch

import nonlocalnet.tasks  # noqa: F401  (registers the built-in tasks, as an application imports it)

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


@pytest.fixture(scope="session")
def released_cache(tmp_path_factory):
    """``(cache_dir, state)``: a weights cache in which the authors' c2d_baseline_8x8 file (made by
    the exporter in the released layout, ``weights_server.released_pickle``) was downloaded from a
    127.0.0.1 server and converted once; ``state``: the weights it holds."""
    from weights_server import RELEASED, WeightsServer, released_pickle

    from nonlocalnet.models import weights_file

    data, state = released_pickle("c2d_r50_8x8")
    cache = tmp_path_factory.mktemp("weights_cache")
    server = WeightsServer()
    server.files[f"/{RELEASED}.pkl"] = data
    try:
        weights_file(RELEASED, cache_dir=cache, mirror=server.base, progress=False)
    finally:
        server.close()
    return cache, state
