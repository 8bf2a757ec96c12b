"""COCO results and pycocotools' COCOeval: torchvision detector outputs to COCO's results
format, and box AP, mask AP and keypoint AP in percent (the paper's units)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from nonlocalnet.atomic import atomic_write
from nonlocalnet.errors import InvalidValueError

__all__ = [
    "BOX_STATS",
    "COCO_PERSON_OKS_SIGMAS",
    "IOU_TYPES",
    "KEYPOINT_STATS",
    "CocoStats",
    "coco_evaluate",
    "to_coco_results",
    "write_coco_results",
]

IOU_TYPES = ("bbox", "segm", "keypoints")
BOX_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# COCO's 17 person keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
COCO_PERSON_OKS_SIGMAS = tuple(
    s / 10 for s in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87,
                     0.87, 0.89, 0.89)
)  # fmt: skip
_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


class CocoStats(dict):
    """``{iou_type: {stat: percent}}``; :attr:`summary_lines` holds COCOeval's printed summary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summary_lines: list[str] = []


def _cpu(value: Tensor) -> Tensor:
    return value.detach().to("cpu")


def to_coco_results(
    outputs: Sequence[dict[str, Tensor]],
    image_ids: Sequence[int],
    label_to_category: dict[int, int],
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """torchvision's eval-mode outputs (one dict per image: ``boxes`` xyxy, ``labels``, ``scores``,
    optional ``masks`` ``(N, 1, H, W)`` probabilities and ``keypoints`` ``(N, K, 3)``) as COCO
    results: ``bbox`` xywh, ``score``, ``category_id``; ``segmentation`` the mask above
    ``mask_threshold`` as compressed RLE (``counts`` a str, JSON-ready); ``keypoints`` flat
    ``[x, y, 1, ...]`` (COCOeval reads only x and y; the instance score scores them)."""
    if len(outputs) != len(image_ids):
        raise InvalidValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        # a copy: .double() of a float64 CPU tensor is that tensor, and xyxy -> xywh below is in place
        boxes = _cpu(out["boxes"]).to(torch.float64, copy=True).reshape(-1, 4)
        if not len(boxes):
            continue
        boxes[:, 2:] -= boxes[:, :2]
        scores, labels = _cpu(out["scores"]).tolist(), _cpu(out["labels"]).tolist()
        unknown = sorted(set(labels) - label_to_category.keys())
        if unknown:
            raise InvalidValueError(
                f"labels {unknown} have no COCO category (known labels: {sorted(label_to_category)})"
            )
        items = [
            {"image_id": int(image_id), "category_id": label_to_category[label], "bbox": box, "score": score}
            for box, label, score in zip(boxes.tolist(), labels, scores, strict=True)
        ]
        if "masks" in out:
            masks = _cpu(out["masks"])
            masks = (masks.reshape(len(items), *masks.shape[-2:]) > mask_threshold).to(torch.uint8)
            rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy()))
            for item, rle in zip(items, rles, strict=True):
                size = [int(s) for s in rle["size"]]
                item["segmentation"] = {"size": size, "counts": rle["counts"].decode()}
        if "keypoints" in out:
            kps = _cpu(out["keypoints"]).double().reshape(len(items), -1, 3).clone()
            kps[..., 2] = 1
            for item, kp in zip(items, kps.flatten(1).tolist(), strict=True):
                item["keypoints"] = kp
        results += items
    return results


def write_coco_results(path: str | PathLike, results: Sequence[dict[str, Any]]) -> Path:
    """Write ``results`` as a COCO results JSON file, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(results), f)

    return atomic_write(path, write)


def _keypoint_setup(coco_gt: COCO, oks_sigmas: Sequence[float] | None) -> tuple[list[int], np.ndarray]:
    """The categories with keypoints and the OKS sigmas, one per keypoint."""
    cats = [c for c in sorted(coco_gt.cats) if coco_gt.cats[c].get("keypoints")]
    if not cats:
        raise InvalidValueError(
            "keypoint evaluation: no category of the ground truth names keypoints (a keypoint model "
            "is evaluated on a keypoint annotation file, e.g. person_keypoints_val2017.json)"
        )
    k = len(coco_gt.cats[cats[0]]["keypoints"])
    if oks_sigmas is None:
        if k != 17:
            raise InvalidValueError(
                f"keypoint evaluation: the ground truth has {k} keypoints, not COCO's 17 person keypoints; "
                f"give the eval oks_sigmas (one per keypoint, {k} values)"
            )
        oks_sigmas = COCO_PERSON_OKS_SIGMAS
    if len(oks_sigmas) != k:
        raise InvalidValueError(
            f"oks_sigmas has {len(oks_sigmas)} values but the ground truth has {k} keypoints"
        )
    return cats, np.asarray(oks_sigmas, dtype=np.float64)


def _check_results(coco_gt: COCO, results: Sequence[dict[str, Any]]) -> None:
    for r in results:
        if r["image_id"] not in coco_gt.imgs:
            raise InvalidValueError(f"a result is for image {r['image_id']}, which the ground truth lacks")
        if r["category_id"] not in coco_gt.cats:
            raise InvalidValueError(f"a result has category {r['category_id']}, which the ground truth lacks")


def _checked_keypoint_setup(
    coco_gt: COCO, results: Sequence[dict[str, Any]], oks_sigmas: Sequence[float] | None
) -> tuple[list[int], np.ndarray]:
    """:func:`_keypoint_setup`, after checking that the ground truth of those categories and every
    keypoint result have the keypoints."""
    cats, sigmas = _keypoint_setup(coco_gt, oks_sigmas)
    anns = coco_gt.anns.values()
    lacking = [a["id"] for a in anns if a["category_id"] in cats and "keypoints" not in a]
    if lacking:
        raise InvalidValueError(
            f"keypoint evaluation: ground-truth annotations {lacking[:10]} of categories with "
            "keypoints have no keypoints"
        )
    k = len(sigmas)
    if any(len(r["keypoints"]) != 3 * k for r in results if "keypoints" in r):
        raise InvalidValueError(f"keypoint results must have {3 * k} values (x, y, v for {k} keypoints)")
    return cats, sigmas


def coco_evaluate(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str],
    *,
    oks_sigmas: Sequence[float] | None = None,
    image_ids: Sequence[int] | None = None,
) -> CocoStats:
    """COCOeval of ``results`` against ``coco_gt`` for each of ``iou_types`` (``bbox``, ``segm``,
    ``keypoints``) over ``image_ids`` (default: all): ``{iou_type: {stat: value}}`` with
    :data:`BOX_STATS` (bbox, segm) or :data:`KEYPOINT_STATS`, in percent. COCOeval's ``-1`` (no
    ground truth in that area range) stays ``-1.0``; no results (or no images) give zeros.

    Each type is evaluated on its own field only, so loadRes takes a detection's area from its
    mask (segm) or its keypoints' extent (keypoints), as torchvision's reference does. Keypoints
    use the categories that name keypoints and ``oks_sigmas`` (one per keypoint; COCO's person
    sigmas by default, only for 17 keypoints). COCOeval's printout is kept in
    :attr:`CocoStats.summary_lines`, not printed.
    """
    stats = CocoStats()
    _check_results(coco_gt, results)
    img_ids = sorted(coco_gt.imgs) if image_ids is None else sorted({int(i) for i in image_ids})
    missing = sorted(set(img_ids) - coco_gt.imgs.keys())
    if missing:
        raise InvalidValueError(f"image ids {missing[:10]} are not in the ground truth")
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise InvalidValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
        names = KEYPOINT_STATS if iou_type == "keypoints" else BOX_STATS
        key = _FIELD[iou_type]
        if iou_type == "segm" and any("segmentation" not in a for a in coco_gt.anns.values()):
            raise InvalidValueError("segm evaluation: the ground truth has annotations without segmentation")
        if iou_type == "keypoints":
            cats, sigmas = _checked_keypoint_setup(coco_gt, results, oks_sigmas)
        typed = [
            {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], key: r[key]}
            for r in results
            if key in r
        ]
        if not typed or not img_ids:
            stats[iou_type] = dict.fromkeys(names, 0.0)
            stats.summary_lines.append(f"{iou_type}: no detections, every stat is 0")
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(typed), iou_type)
            evaluator.params.imgIds = img_ids
            if iou_type == "keypoints":
                evaluator.params.catIds = cats
                evaluator.params.kpt_oks_sigmas = sigmas
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        values = zip(names, evaluator.stats, strict=True)
        stats[iou_type] = {n: -1.0 if v < 0 else float(v) * 100 for n, v in values}
        stats.summary_lines += [f"{iou_type}:", *printed.getvalue().splitlines()]
    return stats
