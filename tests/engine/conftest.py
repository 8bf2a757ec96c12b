from pathlib import Path

import pytest
from tiny_video import make_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    return make_dataset(tmp_path_factory.mktemp("tiny_videos"))
