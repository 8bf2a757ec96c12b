"""The tiny COCO-format data set of :mod:`coco_files` as a fixture (the detection tests skip
without torchvision and pycocotools)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from coco_files import write_tiny_coco


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """``(images folder, annotation file)`` of the tiny COCO set."""
    return write_tiny_coco(tmp_path / "coco")
