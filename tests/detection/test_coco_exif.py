"""EXIF orientation in COCO-format data (:func:`~nonlocalnet.detection.coco.load_image`): the
annotation file's width/height say which pixels the annotations were drawn on. The stored pixels
whenever their size matches (COCO's convention: pycocotools and torchvision's reference never
apply EXIF), squares included; the upright image only when its size matches and the stored one's
does not (a tool that shows images upright, e.g. labelme); neither: a broken image, whose reason
gives both sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.detection.coco import CocoDetection, load_image


def _jpeg(path: Path, width: int, height: int, orientation: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)
    return path


def _decoded(path: Path, upright: bool) -> torch.Tensor:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im) if upright else im
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


# (file, stored width, stored height, EXIF orientation, annotated width, annotated height, upright)
CASES = [
    ("sideways_upright_size.jpg", 48, 32, 6, 32, 48, True),  # annotated on the upright image
    ("sideways_stored_size.jpg", 48, 32, 6, 48, 32, False),  # COCO: on the stored pixels
    ("square.jpg", 40, 40, 8, 40, 40, False),  # both sizes match: COCO's convention
    ("upside_down.jpg", 44, 36, 3, 44, 36, False),  # 180 degrees: the size never tells
    ("neither.jpg", 48, 32, 6, 50, 30, None),  # a broken image
]


@pytest.fixture
def exif_coco(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    records, anns = [], []
    for i, (name, w, h, orientation, aw, ah, _) in enumerate(CASES, start=1):
        _jpeg(images / name, w, h, orientation, seed=i)
        records.append({"id": i, "file_name": name, "width": aw, "height": ah})
        anns.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120.0, "iscrowd": 0}
        )
    annotations = tmp_path / "annotations.json"
    annotations.write_text(
        json.dumps({"images": records, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    return images, annotations


def test_the_annotation_size_decides_whether_exif_applies(exif_coco):
    dataset = CocoDetection(*exif_coco, train=False)
    by_name = {Path(dataset.path(i)).name: dataset[i] for i in range(len(dataset))}
    for name, _, _, _, aw, ah, upright in CASES:
        item = by_name[name]
        if upright is None:
            assert isinstance(item, BadSample)
            assert item.reason == (
                "decoded size 48x32 (32x48 upright by its EXIF orientation) differs from the annotation "
                "file's 50x30"
            )
            continue
        assert not isinstance(item, BadSample), (name, item)
        assert item.image.shape == (3, ah, aw), name
        assert torch.equal(item.image, _decoded(exif_coco[0] / name, upright)), name
        assert not torch.equal(item.image, _decoded(exif_coco[0] / name, not upright)), name


def test_load_image_exif_choices(exif_coco):
    path = exif_coco[0] / "sideways_upright_size.jpg"
    assert torch.equal(load_image(path, exif=True), _decoded(path, True))
    assert torch.equal(load_image(path), _decoded(path, False))  # no size given: the stored pixels
    assert torch.equal(load_image(path, 32, 48), _decoded(path, True))
    assert load_image(path, 32, 48, exif=False) == (
        "decoded size 48x32 (32x48 upright by its EXIF orientation) differs from the annotation file's 32x48"
    )
    assert (
        load_image(path, 48, 32, exif=True) == "decoded size 32x48 differs from the annotation file's 48x32"
    )
