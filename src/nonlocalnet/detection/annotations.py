"""Reading and checking a COCO-format annotation file before anything trains on it.

A broken file fails at once with :class:`~nonlocalnet.errors.InvalidValueError` naming the file
and the first problem (not JSON, a missing key, an annotation of an unknown image or category,
a non-positive image size, a box, segmentation or keypoint list of the wrong form), rather than
deep inside a data-loader worker or COCOeval.

Fields COCOeval needs but that some hand-made files omit are filled in place: ``iscrowd`` (0),
``area`` (the segmentation's area, else the box's) and ``num_keypoints`` (the visible ones).
"""

from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = ["load_coco_json", "segmentation_to_rle"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def segmentation_to_rle(segm: Any, height: int, width: int) -> dict[str, Any] | None:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE, or
    ``None`` for polygons that all have fewer than 3 points (an empty mask)."""
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _check_segmentation(fail, segm: Any, height: int, width: int) -> None:
    if isinstance(segm, list):
        if not segm or not all(isinstance(p, list) and p and all(map(_is_number, p)) for p in segm):
            fail("segmentation must be a non-empty list of polygons [x1, y1, x2, y2, ...] or an RLE dict")
        if any(len(p) % 2 for p in segm):
            fail("a segmentation polygon has an odd number of coordinates")
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            fail("an RLE segmentation needs 'counts' and 'size'")
        if list(segm["size"]) != [height, width]:
            fail(f"RLE size {segm['size']} differs from the image's [height, width] [{height}, {width}]")
        if not isinstance(segm["counts"], (list, str, bytes)):
            fail(f"RLE counts must be a list or a string, got {type(segm['counts']).__name__}")
    else:
        fail(f"segmentation must be a list of polygons or an RLE dict, got {type(segm).__name__}")


def _records(data: dict, key: str, path: Path, required: dict[str, Any]) -> dict[int, dict]:
    """``data[key]`` as ``{id: record}``, each record a dict with ``required`` fields."""
    if not isinstance(data[key], list):
        raise InvalidValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    out: dict[int, dict] = {}
    what = key.rstrip("s")
    for n, rec in enumerate(data[key]):
        if not isinstance(rec, dict):
            raise InvalidValueError(f"{path}: {key}[{n}] must be an object, got {type(rec).__name__}")
        for name, check in required.items():
            if name not in rec:
                raise InvalidValueError(f"{path}: {key}[{n}] has no '{name}'")
            if not check(rec[name]):
                ident = rec.get("id", n)
                raise InvalidValueError(f"{path}: {what} {ident!r}: invalid '{name}' {rec[name]!r}")
        if rec["id"] in out:
            raise InvalidValueError(f"{path}: two {key} have the id {rec['id']}")
        out[rec["id"]] = rec
    return out


def load_coco_json(path: str | PathLike) -> dict[str, Any]:
    """The checked content of a COCO annotation file (``images``, ``annotations``,
    ``categories``), with ``iscrowd``, ``area`` and ``num_keypoints`` filled where missing."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such annotation file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidValueError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict):
        raise InvalidValueError(f"{path}: a COCO annotation file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise InvalidValueError(
                f"{path}: missing key '{key}' (a COCO annotation file has images, annotations and categories)"
            )
    positive = lambda v: _is_int(v) and v > 0  # noqa: E731
    images = _records(
        data,
        "images",
        path,
        {
            "id": _is_int,
            "file_name": lambda v: isinstance(v, str) and v != "",
            "width": positive,
            "height": positive,
        },
    )
    categories = _records(data, "categories", path, {"id": _is_int, "name": lambda v: isinstance(v, str)})
    num_kp: dict[int, int] = {}
    for cid, cat in categories.items():
        names = cat.get("keypoints") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidValueError(f"{path}: category {cid}: 'keypoints' must be a list of names")
        num_kp[cid] = len(names)
    anns = _records(
        data,
        "annotations",
        path,
        {
            "id": _is_int,
            "image_id": _is_int,
            "category_id": _is_int,
            "bbox": lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)),
        },
    )
    with_segm = sum("segmentation" in a for a in anns.values())
    for aid, ann in anns.items():

        def fail(problem: str, aid: int = aid) -> None:
            raise InvalidValueError(f"{path}: annotation {aid}: {problem}")

        img = images.get(ann["image_id"])
        if img is None:
            fail(f"unknown image_id {ann['image_id']}")
        if ann["category_id"] not in categories:
            fail(f"unknown category_id {ann['category_id']} (categories: {sorted(categories)})")
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1):
            fail(f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if "segmentation" in ann:
            _check_segmentation(fail, ann["segmentation"], img["height"], img["width"])
        elif with_segm:
            fail(
                "has no segmentation while other annotations have one; masks (training and segm evaluation) "
                "need one for every annotation"
            )
        if "keypoints" in ann:
            k, kps = num_kp[ann["category_id"]], ann["keypoints"]
            if not k:
                fail(f"has keypoints but its category {ann['category_id']} names none")
            if not isinstance(kps, list) or len(kps) != 3 * k or not all(map(_is_number, kps)):
                fail(f"keypoints must be {3 * k} numbers (x, y, v for {k} keypoints), got {kps!r:.80}")
            ann.setdefault("num_keypoints", sum(1 for v in kps[2::3] if v > 0))
        if "area" not in ann:
            segm = ann.get("segmentation")
            rle = segmentation_to_rle(segm, img["height"], img["width"]) if segm is not None else None
            ann["area"] = float(mask_utils.area(rle)) if rle is not None else float(np.prod(ann["bbox"][2:]))
        elif not _is_number(ann["area"]):
            fail(f"invalid area {ann['area']!r}")
    return data
