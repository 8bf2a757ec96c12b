"""A tiny COCO-format data set written into ``tmp_path``: polygons, uncompressed and compressed
RLE, a crowd region, an image without annotations and one with only a crowd region, five
keypoints with left/right names, RGB, grayscale, RGBA, palette and JPEG images, a truncated PNG
and a missing file. Every image has its own size (tests find an image's target by its size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_hand", "right_hand"]
OKS_SIGMAS = [0.05, 0.05, 0.05, 0.08, 0.08]
CATEGORIES = [
    {"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]},
    {"id": 3, "name": "ball"},
    {"id": 7, "name": "box"},
]


def box_mask(h: int, w: int, bbox: list[float]) -> np.ndarray:
    x, y, bw, bh = (int(v) for v in bbox)
    m = np.zeros((h, w), dtype=np.uint8)
    m[y : y + bh, x : x + bw] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def polygon(bbox: list[float]) -> list[list[float]]:
    x, y, w, h = bbox
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_tiny_coco(root: Path) -> tuple[Path, Path]:
    """Writes ``root/images/*`` and ``root/annotations.json``; returns both paths."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # (id, file, width, height, PIL mode)
    images = [
        (1, "rgb.png", 64, 48, "RGB"),
        (2, "gray.png", 48, 64, "L"),
        (3, "rgba.png", 40, 40, "RGBA"),
        (4, "photo.jpg", 56, 40, "RGB"),
        (5, "palette.png", 32, 32, "P"),
        (6, "broken.png", 36, 36, "RGB"),
        (7, "missing.png", 44, 44, "RGB"),
    ]
    kp1 = [18, 10, 2, 15, 8, 2, 21, 8, 1, 9, 30, 2, 0, 0, 0]
    kp4 = [20, 8, 2, 17, 7, 2, 23, 7, 2, 12, 25, 1, 28, 25, 2]
    kp6 = [10, 10, 2, 8, 8, 2, 12, 8, 2, 5, 20, 2, 15, 20, 2]
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [8, 6, 20, 30], "iscrowd": 0,
         "segmentation": polygon([8, 6, 20, 30]), "keypoints": kp1, "num_keypoints": 4},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [36, 10, 12, 12],
         "segmentation": uncompressed_rle(box_mask(48, 64, [36, 10, 12, 12]))},  # no iscrowd, no area
        {"id": 21, "image_id": 2, "category_id": 7, "bbox": [4, 4, 16, 20], "iscrowd": 0, "area": 320.0,
         "segmentation": compressed_rle(box_mask(64, 48, [4, 4, 16, 20]))},
        {"id": 22, "image_id": 2, "category_id": 3, "bbox": [24, 30, 20, 20], "iscrowd": 1, "area": 400.0,
         "segmentation": uncompressed_rle(box_mask(64, 48, [24, 30, 20, 20]))},
        {"id": 41, "image_id": 4, "category_id": 1, "bbox": [10, 5, 20, 25], "iscrowd": 0,
         "segmentation": polygon([10, 5, 20, 25]), "keypoints": kp4},  # num_keypoints filled in
        {"id": 42, "image_id": 4, "category_id": 7, "bbox": [34, 12, 14, 16], "iscrowd": 0,
         "segmentation": polygon([34, 12, 14, 16])},
        {"id": 51, "image_id": 5, "category_id": 7, "bbox": [2, 2, 10, 10], "iscrowd": 1, "area": 100.0,
         "segmentation": uncompressed_rle(box_mask(32, 32, [2, 2, 10, 10]))},
        {"id": 61, "image_id": 6, "category_id": 1, "bbox": [4, 4, 16, 20], "iscrowd": 0,
         "segmentation": polygon([4, 4, 16, 20]), "keypoints": kp6, "num_keypoints": 5},
        {"id": 71, "image_id": 7, "category_id": 3, "bbox": [4, 4, 10, 10], "iscrowd": 0,
         "segmentation": polygon([4, 4, 10, 10])},
    ]  # fmt: skip
    for image_id, name, w, h, mode in images:
        if name == "missing.png":
            continue
        pixels = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
        for k, a in enumerate(a for a in anns if a["image_id"] == image_id):
            x, y, bw, bh = a["bbox"]
            pixels[y : y + bh, x : x + bw] = (200 - 40 * k, 60 + 50 * k, 255)  # each object its colour
        im = Image.fromarray(pixels)
        if mode == "L":
            im = im.convert("L")
        elif mode == "RGBA":
            im = im.convert("RGBA")
        elif mode == "P":
            im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        path = images_dir / name
        im.save(path, quality=95) if name.endswith(".jpg") else im.save(path)
        if name == "broken.png":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])  # truncated
    content = {
        "info": {"description": "tiny"},
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h, _ in images],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps(content))
    return images_dir, ann_file
