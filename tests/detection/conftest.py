"""The tiny COCO-format data set of :mod:`coco_files` as a fixture (the detection tests skip
without torchvision and pycocotools)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from coco_files import write_tiny_coco


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """``(images folder, annotation file)`` of the tiny COCO set."""
    return write_tiny_coco(tmp_path / "coco")


@pytest.fixture(scope="module")
def one_thread_module():
    """One thread for a whole module: in-process runs compute alike (bit-exact comparisons) and
    leave the shared cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
