"""Detectors from configs and from trained runs: :func:`build_detector_from_config` (what
``task: detection`` trains), :func:`load_trained_detector` (a training checkpoint back to a
model, its config and its classes) and :func:`predict_image` (one image file through it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nonlocalnet.detection.coco import load_image
from nonlocalnet.detection.models import build_detector, detector_info, load_detector_weights
from nonlocalnet.engine.config import Config, DetectionConfig, config_from_dict
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = [
    "TrainedDetector",
    "build_detector_from_config",
    "load_trained_detector",
    "predict_image",
    "read_image",
]


def build_detector_from_config(
    det: DetectionConfig, num_classes: int, num_keypoints: int | None = None, *, load_weights: bool = True
) -> tuple[nn.Module, str]:
    """The detector ``det`` names with ``num_classes`` (background included) and, for keypoint
    models, ``num_keypoints``; returns it with a one-line report of where its weights come from
    (``detection.weights`` is loaded unless ``load_weights`` is false: a checkpoint's follow)."""
    info = detector_info(det.model)
    options: dict[str, Any] = dict(det.model_options)
    if info.kind == "keypoints":
        options["num_keypoints"] = num_keypoints
    sizes = tuple(det.min_size)
    model = build_detector(
        det.model,
        num_classes=num_classes,
        weights_backbone=det.weights_backbone,
        trainable_backbone_layers=det.trainable_backbone_layers,
        nonlocal_mode=det.nonlocal_mode,
        nonlocal_norm=det.nonlocal_norm,
        nonlocal_options=dict(det.nonlocal_options) or None,
        min_size=sizes if len(sizes) > 1 else sizes[0],
        max_size=det.max_size,
        pretrained=bool(det.weights or det.weights_backbone),  # frozen BN, as torchvision with weights
        **options,
    )
    if det.weights and load_weights:
        if not Path(det.weights).is_file():
            raise MissingFileError(f"detection.weights: file not found: {det.weights}")
        report = load_detector_weights(model, det.weights)
        return model, f"detector weights from {det.weights}: {report.summary()}"
    if det.weights_backbone:
        return model, f"ImageNet backbone from {det.weights_backbone}; heads and non-local blocks new"
    return model, "random initialisation (identity non-local blocks)"


@dataclass
class TrainedDetector:
    """A trained detector in eval mode with what it was trained with."""

    model: nn.Module
    config: Config
    class_names: list[str]  # label i is class_names[i - 1]; 0 is the background
    category_ids: list[int]
    keypoint_names: list[str]


def load_trained_detector(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
) -> TrainedDetector:
    """Rebuild a detector from a training checkpoint of ``task: detection`` (``iter_*.pt``,
    ``best.pt``): its config, weights, classes and keypoint names."""
    weights = read_model_file(checkpoint, kinds=("checkpoint",))
    if weights.config is None or weights.config.get("task") != "detection":
        task = None if weights.config is None else weights.config.get("task")
        raise InvalidValueError(f"{checkpoint} is not a detection training checkpoint (task {task!r})")
    cfg = config_from_dict(dict(weights.config))
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    names = list(raw.get("class_names") or [])
    keypoints = list(raw.get("keypoint_names") or [])
    info = detector_info(cfg.detection.model)
    model, _ = build_detector_from_config(
        cfg.detection,
        len(names) + 1,
        len(keypoints) if info.kind == "keypoints" else None,
        load_weights=False,
    )
    model.load_state_dict(weights.state)
    model.to(device).eval()
    return TrainedDetector(model, cfg, names, list(raw.get("category_ids") or []), keypoints)


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as float32 ``(3, H, W)`` RGB in [0, 1], decoded as the data sets decode
    (:func:`~nonlocalnet.detection.coco.load_image`); an unusable file is an error saying why."""
    image = load_image(path)
    if isinstance(image, str):
        if image == "missing file":
            raise MissingFileError(f"image not found: {path}")
        raise InvalidValueError(f"{path} is not a readable image: {image}")
    return image


@torch.no_grad()
def predict_image(
    model: nn.Module, image: Tensor | str | os.PathLike, *, device: str | torch.device = "cpu"
) -> dict:
    """The detector's prediction for one image (a path or a ``(3, H, W)`` float tensor in
    [0, 1]): torchvision's output dict (``boxes`` xyxy, ``labels``, ``scores``, and ``masks``
    ``(n, 1, H, W)`` / ``keypoints`` ``(n, K, 3)`` where the model predicts them), on the CPU."""
    if not isinstance(image, Tensor):
        image = read_image(image)
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidValueError(f"expected an image (3, H, W), got shape {tuple(image.shape)}")
    was_training = model.training
    model.eval()
    try:
        out = model([image.to(device)])[0]
    finally:
        model.train(was_training)
    return {k: v.cpu() for k, v in out.items()}
