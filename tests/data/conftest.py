"""Fixtures for tiny test videos (``coded_video``): each frame's index is drawn as a block code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from coded_video import frame_code, write_video


@pytest.fixture
def make_video(tmp_path) -> Callable[..., Path]:
    """``make_video(name, num_frames=48, **options)`` -> path of a new test video in tmp_path."""

    def make(name: str = "v.mp4", num_frames: int = 48, **kw) -> Path:
        return write_video(tmp_path / name, num_frames, **kw)

    return make


@pytest.fixture
def code() -> Callable[[torch.Tensor], int]:
    return frame_code


@pytest.fixture
def codes() -> Callable[[torch.Tensor], list[int]]:
    return lambda frames: [frame_code(f) for f in frames]
