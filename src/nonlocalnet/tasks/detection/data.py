"""The detection task's data: the COCO-format sets a detector trains and is validated on, and
the log record of an evaluation. Needs the ``detection`` extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.evaluate import DetectionEvaluation
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.models.registry import ModelInfo, list_models
from nonlocalnet.tasks.detection.config import DetectionConfig

__all__ = ["check_oks_sigmas", "detection_dataset", "evaluation_record"]

_IOU_NAMES = {"bbox": "box", "segm": "mask", "keypoints": "kp"}


def detection_dataset(
    det: DetectionConfig, split: str, *, train: bool, seed: int, info: ModelInfo
) -> CocoDetection:
    """The ``split`` data as the detector ``info`` uses it: masks only for a mask head (whose
    instances without a mask are dropped), keypoints only for a keypoint head (and training's
    ``detection.min_keypoints_per_image``)."""
    images, annotations = getattr(det, f"{split}_images"), getattr(det, f"{split}_annotations")
    for key, path in ((f"{split}_images", images), (f"{split}_annotations", annotations)):
        if not Path(path).exists():
            raise ConfigError(f"detection.{key}: no such file or folder: {path}")
    keypoints = info.has_keypoints
    dataset = CocoDetection(
        images,
        annotations,
        train=train,
        flip=det.flip and train,
        seed=seed,
        masks=None if info.has_masks else False,
        keypoints=None if keypoints else False,
        keypoint_flip_map=det.keypoint_flip_map,
        min_keypoints_per_image=det.min_keypoints_per_image if train and keypoints else 0,
    )
    if info.has_masks and not dataset.masks:
        boxes_only = [n for n in list_models("detector") if n.startswith("fasterrcnn")]
        same = info.name.replace("maskrcnn", "fasterrcnn", 1)
        suggestion = f"{same!r}" if same in boxes_only else " or ".join(map(repr, boxes_only))
        raise ConfigError(
            f"detection.model {info.name!r} trains masks but detection.{split}_annotations {annotations} has "
            "no segmentation (box-only data: every segmentation missing or []); train a Faster R-CNN "
            f"model on it, e.g. detection.model={suggestion} (nonlocalnet models lists them)"
        )
    if train and not len(dataset):
        reasons = "; ".join(f"{n} {r}" for r, n in dataset.data_report()["skipped_images"].items())
        raise ConfigError(
            f"detection.train_annotations: no image of {annotations} is left to train on ({reasons}); "
            "detection.min_keypoints_per_image (torchvision's reference: 10) sets the keypoint rule"
        )
    return dataset


def evaluation_record(evaluation: DetectionEvaluation) -> dict[str, Any]:
    """The flat log record of an evaluation: ``box_AP``, ``box_AP50``, ..., ``mask_AP``, ...,
    ``kp_AP`` (percent, COCOeval's summaries), the images, the unreadable ones and the
    detections dropped for labels without a category (category-id labels)."""
    record: dict[str, Any] = {}
    for iou_type, stats in evaluation.stats.items():
        record |= {f"{_IOU_NAMES[iou_type]}_{name}": value for name, value in stats.items()}
    record["images"] = evaluation.images
    record["bad_images"] = sorted({b.path for b in evaluation.bad})
    record["dropped_detections"] = sum(evaluation.dropped.values())
    return record


def check_oks_sigmas(det: DetectionConfig, k: int) -> None:
    """COCOeval's keypoint AP needs one OKS sigma per keypoint: say so when the run starts,
    not at its first evaluation."""
    if det.oks_sigmas is None and k != 17:
        raise ConfigError(
            f"detection.oks_sigmas: {det.train_annotations} defines {k} keypoints, not COCO's 17 person "
            f"keypoints, so give one OKS sigma per keypoint ({k} values)"
        )
    if det.oks_sigmas is not None and len(det.oks_sigmas) != k:
        raise ConfigError(
            f"detection.oks_sigmas has {len(det.oks_sigmas)} values but {det.train_annotations} defines "
            f"{k} keypoints"
        )
