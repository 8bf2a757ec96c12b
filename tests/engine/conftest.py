from pathlib import Path

import pytest
import torch
from tiny_video import make_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    return make_dataset(tmp_path_factory.mktemp("tiny_videos"))


@pytest.fixture
def one_thread():
    """In-process runs compute like the one-thread subprocesses (bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
