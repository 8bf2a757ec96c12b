"""Reading and checking a COCO-format annotation file before anything trains on it.

A file that is broken as a whole fails at once with :class:`~nonlocalnet.errors.InvalidValueError`
naming the file and the first problem (not JSON, a missing key, an annotation of an unknown image
or category, a non-positive image size, a box or keypoint list of the wrong form), rather than
deep inside a data-loader worker or COCOeval.

An annotation whose segmentation pycocotools would misread (a polygon of fewer than 3 points or
an odd number of coordinates, an RLE of another size than its image, RLE run lengths that do not
sum to ``height * width``, a compressed RLE string that is not one) is one unusable instance: it
is dropped, from training and from the evaluation's ground truth alike, and listed as a
:class:`DroppedAnnotation` (file, annotation id, field, reason). pycocotools checks none of
this: its decoder shifts the masks decoded after a short RLE and leaves bytes of uninitialised
memory in them, and COCOeval fails on a 2-point polygon. ``"segmentation": []`` (or ``null``)
means "no mask" (box-only exports) and is removed from the record.

Fields COCOeval needs but that some hand-made files omit are filled in place: ``iscrowd`` (0),
``area`` (the segmentation's area, else the box's) and ``num_keypoints`` (the visible ones).
"""

from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
from pycocotools import mask as mask_utils

from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = [
    "DroppedAnnotation",
    "load_coco_json",
    "rle_string_counts",
    "segmentation_problem",
    "segmentation_to_rle",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


class DroppedAnnotation(NamedTuple):
    """An annotation left out of training and of the evaluation's ground truth (with
    ``instance_kept``, one polygon of it; the instance stays): the annotation
    ``file``, the annotation's id, the ``field`` at fault (``segmentation[1]``,
    ``segmentation.counts``...) and the ``reason``."""

    file: str
    annotation_id: int
    field: str
    reason: str
    instance_kept: bool = False


def _trim_degenerate_polygons(file: str, aid: int, ann: dict[str, Any]) -> list[DroppedAnnotation]:
    """Remove from ``ann``'s polygons those of fewer than 3 points (an even number of numeric
    coordinates) when a polygon of 3 or more points remains, as detectron2's COCO loader does;
    one entry per removed polygon (the instance itself stays)."""
    segm = ann["segmentation"]
    if not isinstance(segm, list) or not all(isinstance(p, list) and all(map(_is_number, p)) for p in segm):
        return []
    short = [n for n, poly in enumerate(segm) if len(poly) < 6 and len(poly) % 2 == 0]
    if not short or len(short) == len(segm) or any(len(poly) % 2 for poly in segm):
        return []
    ann["segmentation"] = [poly for n, poly in enumerate(segm) if n not in short]
    why = "a polygon of {} point(s) left out; the instance keeps its other polygons"
    return [
        DroppedAnnotation(file, aid, f"segmentation[{n}]", why.format(len(segm[n]) // 2), instance_kept=True)
        for n in short
    ]


def segmentation_to_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE. Only for
    segmentations :func:`segmentation_problem` accepts: pycocotools reads others wrongly."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def rle_string_counts(counts: str | bytes) -> np.ndarray | str:
    """The run lengths (int64) a compressed COCO RLE ``counts`` string holds, read as
    pycocotools' ``rleFrString`` reads it, or why it is not such a string.

    The format: characters ``'0'`` to ``'o'``, each 5 bits of a number and a continuation bit
    (0x20), the last character's 0x10 bit the number's sign; from the fourth run on, a number is
    the difference to the run two before. pycocotools itself accepts any string (reading past its
    end when the last character continues)."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError:
        return "a character outside compressed RLE's alphabet '0' to 'o'"
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if not c.size:
        return np.zeros(0, dtype=np.int64)
    outside = (c < 0) | (c > 63)
    if outside.any():
        bad = chr(raw[int(outside.argmax())])
        return f"character {bad!r} is outside compressed RLE's alphabet '0' to 'o'"
    more = (c & 0x20) != 0
    if more[-1]:
        return "the string ends inside a number"
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:
        return f"a number of {lengths.max()} characters (32-bit run lengths take at most 7)"
    shifts = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
    numbers = np.add.reduceat((c & 0x1F) << shifts, starts)
    negative = (c[ends] & 0x10) != 0
    if negative.any():
        numbers[negative] -= np.int64(1) << (5 * lengths[negative])
    numbers[1::2] = np.cumsum(numbers[1::2])
    numbers[2::2] = np.cumsum(numbers[2::2])
    return numbers


def _uncompressed_counts(counts: list) -> np.ndarray | None:
    """The run lengths of an uncompressed RLE as int64, or ``None`` unless they are whole,
    non-negative numbers."""
    try:
        arr = np.asarray(counts)
    except (ValueError, OverflowError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        return None
    if arr.dtype.kind == "f" and arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        return None
    if arr.size and arr.min() < 0:
        return None
    return arr.astype(np.int64)


def segmentation_problem(segm: Any, height: int, width: int) -> tuple[str, str] | None:
    """``(field, reason)`` when pycocotools would not read ``segmentation`` correctly as a mask of
    a ``height x width`` image, else ``None``. Polygons: lists of at least 3 points (an even number
    of finite coordinates, at least 6). RLE: ``size`` the image's ``[height, width]``; ``counts``
    non-negative whole run lengths (a list, or pycocotools' compressed string: see
    :func:`rle_string_counts`) that sum to ``height * width``."""
    if isinstance(segm, list):
        for n, poly in enumerate(segm):
            where = f"segmentation[{n}]"
            if not isinstance(poly, list) or not all(map(_is_number, poly)):
                return where, f"a polygon is a list of numbers [x1, y1, x2, y2, ...], got {poly!r:.60}"
            if len(poly) % 2:
                return where, f"a polygon has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return where, f"a polygon needs at least 3 points (6 coordinates), got {len(poly)} numbers"
        return None
    if not isinstance(segm, dict):
        return "segmentation", f"expected a list of polygons or an RLE dict, got {type(segm).__name__}"
    if "counts" not in segm or "size" not in segm:
        return "segmentation", f"an RLE needs 'counts' and 'size', got the keys {sorted(segm)}"
    size = segm["size"]
    if not isinstance(size, list) or size != [height, width]:
        expected = f"the image's [height, width] [{height}, {width}]"
        return "segmentation.size", f"RLE size {size!r} differs from {expected}"
    counts = segm["counts"]
    if isinstance(counts, list):
        runs, kind = _uncompressed_counts(counts), "uncompressed"
        if runs is None:
            return "segmentation.counts", "uncompressed RLE counts must be non-negative whole numbers"
    elif isinstance(counts, (str, bytes)):
        decoded, kind = rle_string_counts(counts), "compressed"
        if isinstance(decoded, str):
            return "segmentation.counts", f"not a compressed RLE string: {decoded}"
        runs = decoded
        if runs.size and runs.min() < 0:
            return "segmentation.counts", "the compressed RLE string holds a negative run length"
    else:
        return "segmentation.counts", f"RLE counts must be a list or a string, got {type(counts).__name__}"
    total = int(runs.sum())
    if total != height * width:
        return (
            "segmentation.counts",
            f"{kind} RLE run lengths sum to {total}, not height * width = {height} * {width} = "
            f"{height * width} (pycocotools would decode a wrong mask or fail)",
        )
    return None


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


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object of a COCO annotation file, which must have its three lists."""
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
    return data


def load_coco_json(path: str | PathLike) -> tuple[dict[str, Any], list[DroppedAnnotation]]:
    """The checked content of a COCO annotation file (``images``, ``annotations``,
    ``categories``), with ``iscrowd``, ``area`` and ``num_keypoints`` filled where missing, and
    the annotations left out of it because their segmentation is unusable
    (:func:`segmentation_problem`). ``"segmentation": []`` or ``null`` (no mask) is removed."""
    path = Path(path)
    data = _read_json_object(path)
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
    dropped: list[DroppedAnnotation] = []
    for aid, ann in anns.items():
        dropped += _check_annotation(path, aid, ann, images, num_kp)
    if dropped:
        gone = {d.annotation_id for d in dropped if not d.instance_kept}
        data["annotations"] = [a for a in data["annotations"] if a["id"] not in gone]
    return data, dropped


def _check_annotation(
    path: Path, aid: int, ann: dict[str, Any], images: dict[Any, dict[str, Any]], num_kp: dict[int, int]
) -> list[DroppedAnnotation]:
    """Check one annotation (``num_kp``: keypoints per category id) and fill in its defaults;
    returns what is dropped of it (the whole annotation, or degenerate polygons)."""

    def fail(problem: str) -> NoReturn:
        raise InvalidValueError(f"{path}: annotation {aid}: {problem}")

    img = images.get(ann["image_id"])
    if img is None:
        fail(f"unknown image_id {ann['image_id']}")
    if ann["category_id"] not in num_kp:
        fail(f"unknown category_id {ann['category_id']} (categories: {sorted(num_kp)})")
    ann.setdefault("iscrowd", 0)
    if ann["iscrowd"] not in (0, 1):
        fail(f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
    if "keypoints" in ann:
        k, kps = num_kp[ann["category_id"]], ann["keypoints"]
        if not k:
            fail(f"has keypoints but its category {ann['category_id']} names none")
        if not isinstance(kps, list) or len(kps) != 3 * k or not all(map(_is_number, kps)):
            fail(f"keypoints must be {3 * k} numbers (x, y, v for {k} keypoints), got {kps!r:.80}")
        ann.setdefault("num_keypoints", sum(1 for v in kps[2::3] if v > 0))
    if "area" in ann and not _is_number(ann["area"]):
        fail(f"invalid area {ann['area']!r}")
    if "segmentation" in ann and (ann["segmentation"] is None or ann["segmentation"] == []):
        del ann["segmentation"]  # box-only exports: no mask
    dropped: list[DroppedAnnotation] = []
    if "segmentation" in ann:
        dropped += _trim_degenerate_polygons(str(path), aid, ann)
        problem = segmentation_problem(ann["segmentation"], img["height"], img["width"])
        if problem is not None:
            return [*dropped, DroppedAnnotation(str(path), aid, *problem)]
    if "area" not in ann:
        segm = ann.get("segmentation")
        rle = segmentation_to_rle(segm, img["height"], img["width"]) if segm is not None else None
        ann["area"] = float(mask_utils.area(rle)) if rle is not None else float(np.prod(ann["bbox"][2:]))
    return dropped
