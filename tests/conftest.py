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
