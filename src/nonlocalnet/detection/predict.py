"""Detection on image files, what ``nonlocalnet detect-predict`` runs: one image or a folder of
images through a trained detector (:func:`predict_path`, :func:`predict_images`), each drawn to
a PNG, every detection as JSON (class, score, box; masks as COCO compressed RLE; keypoints with
torchvision's ``keypoints_scores``). Images are read upright by their EXIF orientation
(:func:`~nonlocalnet.detection.trained.read_image`), so boxes are in the image as viewers show
it. In a folder an unreadable file is counted and named, and the other images go on."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from nonlocalnet.atomic import atomic_write_bytes
from nonlocalnet.detection.trained import TrainedDetector, predict_image, read_image
from nonlocalnet.engine.distributed import resolve_device
from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingFileError
from nonlocalnet.viz.detections import save_detections

__all__ = [
    "IMAGE_SUFFIXES",
    "FailedImage",
    "ImageDetections",
    "PredictionReport",
    "choose_device",
    "detections_to_json",
    "find_images",
    "predict_images",
    "predict_path",
]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""The extensions (any case) that :func:`find_images` takes from a folder."""


@dataclass
class ImageDetections:
    """One image's detections: its file, its size as predicted (upright), the drawn PNG (None
    when not drawn) and the detections at or above the threshold (:func:`detections_to_json`)."""

    path: Path
    width: int
    height: int
    detections: list[dict[str, Any]]
    drawing: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.path),
            "width": self.width,
            "height": self.height,
            "drawing": None if self.drawing is None else str(self.drawing),
            "detections": self.detections,
        }


@dataclass
class FailedImage:
    """An image that could not be read, and why."""

    path: Path
    reason: str


@dataclass
class PredictionReport:
    """What :func:`predict_images` did: the images predicted, in order, the files that failed,
    and the JSON file written (None when none was asked for)."""

    score_threshold: float
    images: list[ImageDetections] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)
    json_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "images": [image.to_json() for image in self.images],
            "failed": [{"image": str(f.path), "reason": f.reason} for f in self.failed],
        }


def choose_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first CUDA device when there is one, else
    the CPU) as a device; a CUDA device that is not there is an error naming those that are."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise InvalidValueError(f"device {name!r}: expected cpu, cuda, cuda:N (e.g. cuda:1) or auto")
    device = resolve_device(name)
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index >= count:
        raise InvalidValueError(
            f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def find_images(source: str | os.PathLike) -> list[Path]:
    """``[source]`` for a file (whatever its extension); for a folder, the files directly in it
    whose extension is one of :data:`IMAGE_SUFFIXES` in any case, sorted by name. A missing
    path, or a folder without such files, is an error."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise MissingFileError(f"image not found: {source} (neither a file nor a folder)")
    images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise MissingFileError(
            f"{source}: no image files in this folder (extensions {', '.join(IMAGE_SUFFIXES)}, any case; "
            "subfolders are not searched)"
        )
    return images


def detections_to_json(
    prediction: dict[str, Tensor],
    *,
    label_names: Mapping[int, str],
    label_to_category: Mapping[int, int],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """The detections of ``prediction`` (torchvision's output for one image, on the CPU) scoring
    at least ``score_threshold``, as JSON-ready dicts: ``label`` (the class name
    ``label_names`` gives the predicted label; ``"label N"`` for a label naming no category),
    ``category_id`` (the data's id, ``label_to_category``; None for such a label), ``score``,
    ``box_xyxy`` (pixels, 0.1 px); with masks, ``segmentation``: the mask above
    ``mask_threshold`` as COCO compressed RLE (``{"size": [h, w], "counts": str}``, what
    ``pycocotools.mask.decode`` reads); with keypoints, ``keypoints`` ``[[x, y, v], ...]`` and
    ``keypoint_scores`` (torchvision's ``keypoints_scores``, one per keypoint)."""
    keep = (prediction["scores"] >= score_threshold).nonzero().flatten()
    rows: list[dict[str, Any]] = []
    for i in keep.tolist():
        label = int(prediction["labels"][i])
        rows.append(
            {
                "label": label_names.get(label, f"label {label}"),
                "category_id": label_to_category.get(label),
                "score": float(prediction["scores"][i]),
                "box_xyxy": [round(v, 1) for v in prediction["boxes"][i].tolist()],
            }
        )
    if "masks" in prediction and len(rows):
        masks = prediction["masks"][keep].reshape(len(rows), *prediction["masks"].shape[-2:])
        binary = (masks > mask_threshold).to(torch.uint8).permute(1, 2, 0).numpy()
        for row, rle in zip(rows, mask_utils.encode(np.asfortranarray(binary)), strict=True):
            row["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
    if "keypoints" in prediction:
        scores = prediction.get("keypoints_scores")
        for row, i in zip(rows, keep.tolist(), strict=True):
            row["keypoints"] = [[round(v, 1) for v in kp] for kp in prediction["keypoints"][i].tolist()]
            if scores is not None:
                row["keypoint_scores"] = [float(s) for s in scores[i].tolist()]
    return rows


def _drawn_names(model: torch.nn.Module, label_names: Mapping[int, str]) -> list[str]:
    """The drawing's names, indexed by label (0 the background), for every label the detector's
    box predictor has."""
    cls_score = model.get_submodule("roi_heads.box_predictor.cls_score")
    if not isinstance(cls_score, torch.nn.Linear):
        kind = type(cls_score).__name__
        raise InvalidTypeError(f"the detector's box classifier must be an nn.Linear, got {kind}")
    return ["background"] + [label_names.get(i, f"label {i}") for i in range(1, cls_score.out_features)]


def predict_images(
    trained: TrainedDetector,
    images: Sequence[str | os.PathLike],
    *,
    drawings: Sequence[str | os.PathLike | None] | None = None,
    score_threshold: float = 0.5,
    skip_unreadable: bool = True,
    on_image: Callable[[ImageDetections | FailedImage], None] | None = None,
) -> PredictionReport:
    """Run ``trained.model`` (on its own device) on each image file, read upright by its EXIF
    orientation; draw the detections scoring at least ``score_threshold`` to ``drawings[i]``
    (a PNG; None or no ``drawings``: not drawn). An unreadable image is counted in
    :attr:`PredictionReport.failed` with the reason (``skip_unreadable``) or raised. ``on_image``
    is called with each result as it comes."""
    if not 0.0 <= score_threshold <= 1.0:
        raise InvalidValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if drawings is not None and len(drawings) != len(images):
        raise InvalidValueError(f"{len(drawings)} drawing paths for {len(images)} images")
    model, label_names = trained.model, trained.label_names
    device = next(model.parameters()).device
    names = _drawn_names(model, label_names)
    mask_threshold = trained.mask_threshold
    report = PredictionReport(score_threshold)
    for index, path in enumerate(images):
        path = Path(path)
        try:
            image = read_image(path)
        except (MissingFileError, InvalidValueError) as err:
            if not skip_unreadable:
                raise
            failed = FailedImage(path, str(err))
            report.failed.append(failed)
            if on_image is not None:
                on_image(failed)
            continue
        pred = predict_image(model, image, device=device)
        rows = detections_to_json(
            pred,
            label_names=label_names,
            label_to_category=trained.label_to_category,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )
        target = drawings[index] if drawings is not None else None
        drawing = Path(target) if target is not None else None
        if drawing is not None:
            save_detections(
                drawing,
                image,
                pred,
                class_names=names,
                score_threshold=score_threshold,
                keypoint_names=trained.keypoint_names or None,
                mask_threshold=mask_threshold,
            )
        result = ImageDetections(path, int(image.shape[-1]), int(image.shape[-2]), rows, drawing)
        report.images.append(result)
        if on_image is not None:
            on_image(result)
    return report


def predict_path(
    trained: TrainedDetector,
    source: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    score_threshold: float = 0.5,
    on_image: Callable[[ImageDetections | FailedImage], None] | None = None,
) -> PredictionReport:
    """``nonlocalnet detect-predict``: ``source`` is an image file or a folder of images.

    A file: drawn to ``output`` (default ``IMAGE.detections.png`` next to it); an unreadable
    file is an error; the JSON only where ``json_path`` is given. A folder: its images
    (:func:`find_images`), each drawn to ``OUTPUT/<file name>.png`` (``output`` a folder,
    default ``SOURCE.detections`` next to the source folder), all detections in
    ``OUTPUT/detections.json`` (or ``json_path``); an unreadable image is counted and named in
    the report and the others go on. The JSON is :meth:`PredictionReport.to_json`."""
    source = Path(source)
    images = find_images(source)
    if source.is_dir():
        folder = source.resolve()
        out = Path(output) if output is not None else folder.with_name(folder.name + ".detections")
        if out.resolve() == folder:
            raise InvalidValueError(f"--output {out} is the image folder itself; give another folder")
        if out.exists() and not out.is_dir():
            raise InvalidValueError(f"--output {out} is a file; for a folder of images it names a folder")
        out.mkdir(parents=True, exist_ok=True)
        drawings: list[Path] = [out / f"{p.name}.png" for p in images]
        json_file: Path | None = Path(json_path) if json_path is not None else out / "detections.json"
    else:
        drawings = [Path(output) if output is not None else source.with_suffix(".detections.png")]
        json_file = None if json_path is None else Path(json_path)
    report = predict_images(
        trained,
        images,
        drawings=drawings,
        score_threshold=score_threshold,
        skip_unreadable=source.is_dir(),
        on_image=on_image,
    )
    if json_file is not None:
        atomic_write_bytes(json_file, (json.dumps(report.to_json(), indent=1) + "\n").encode())
        report.json_path = json_file
    return report
