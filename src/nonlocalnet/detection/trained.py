"""Detectors from configs and from trained runs: :func:`build_detector_from_config` (what
``task: detection`` trains), :func:`detector_label_space` (what its labels mean for the data),
:func:`load_trained_detector` (a training checkpoint back to a model, its config, classes and
label space, with config overrides applied to the rebuilt model) and :func:`predict_image` (one
image file through it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nonlocalnet.detection.coco import load_image
from nonlocalnet.detection.labels import LabelSpace, resolve_label_space, weights_num_classes
from nonlocalnet.detection.models import build_detector, load_detector_weights
from nonlocalnet.engine.config import (
    Config,
    ConfigError,
    DetectionConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.models.registry import model_info
from nonlocalnet.models.zoo import resolve_weights

__all__ = [
    "TrainedDetector",
    "build_detector_from_config",
    "detector_label_space",
    "load_trained_detector",
    "predict_image",
    "read_image",
]


def weights_path(det: DetectionConfig, key: str) -> Path | None:
    """``detection.<key>`` (``weights`` or ``weights_backbone``) as a file: a path, or a weights
    name (``nonlocalnet weights``, e.g. ``maskrcnn_resnet50_fpn_coco_v1``) downloaded once into
    the weights cache; ``None`` when unset."""
    value = getattr(det, key)
    if not value:
        return None
    try:
        return resolve_weights(value)
    except MissingFileError:
        raise MissingFileError(
            f"detection.{key}: {value!r} is neither a file nor a weights name (`nonlocalnet weights` "
            "lists the names)"
        ) from None


def build_detector_from_config(
    det: DetectionConfig,
    num_classes: int,
    num_keypoints: int | None = None,
    *,
    load_weights: bool = True,
    pretrained: bool | None = None,
) -> tuple[nn.Module, str]:
    """The detector ``det`` names with ``num_classes`` (background included) and, for keypoint
    models, ``num_keypoints``; returns it with a one-line report of where its weights come from
    (``detection.weights`` is loaded unless ``load_weights`` is false: a checkpoint's follow).
    ``pretrained`` (default: whether ``det`` names weights) builds the backbone's BN frozen, as
    for fine-tuning (:func:`~nonlocalnet.detection.build_detector`)."""
    info = model_info(det.model, "detector")
    options: dict[str, Any] = dict(det.model_options)
    if info.has_keypoints:
        options["num_keypoints"] = num_keypoints
    sizes = tuple(det.min_size)
    if pretrained is None:
        pretrained = bool(det.weights or det.weights_backbone)  # frozen BN, as torchvision with weights
    backbone = weights_path(det, "weights_backbone")
    try:
        model = build_detector(
            det.model,
            num_classes=num_classes,
            weights_backbone=backbone,
            trainable_backbone_layers=det.trainable_backbone_layers,
            nonlocal_options=dict(det.nonlocal_options) or None,
            min_size=sizes if len(sizes) > 1 else sizes[0],
            max_size=det.max_size,
            pretrained=pretrained,
            **options,
        )
    except TypeError as err:  # torchvision's constructor refuses a keyword of model_options
        if not det.model_options:
            raise
        raise ConfigError(f"detection.model_options {det.model_options}: {err}") from None
    if det.weights and load_weights:
        path = weights_path(det, "weights")
        report = load_detector_weights(model, path)
        return model, f"detector weights from {path}: {report.summary()}"
    if det.weights_backbone:
        return model, f"ImageNet backbone from {backbone}; heads and non-local blocks new"
    return model, "random initialisation (identity non-local blocks)"


def detector_label_space(
    det: DetectionConfig, category_ids: Sequence[int], *, data: str = "the data", evaluating: bool = False
) -> LabelSpace:
    """The label space (:func:`~nonlocalnet.detection.labels.resolve_label_space`) of the
    detector ``det`` builds, for data of ``category_ids`` (named ``data`` in messages). The
    class count is ``det.num_classes``, else that of ``det.weights``' box predictor, else the
    space's own. Training (``evaluating`` false) may fine-tune weights of another class count
    (their predictors re-initialised); evaluating them with predictors other than the file's is
    an error."""
    path = weights_path(det, "weights")
    in_file = weights_num_classes(path) if path is not None else None
    if det.num_classes:
        if evaluating and in_file is not None and in_file != det.num_classes:
            raise ConfigError(
                f"detection.num_classes is {det.num_classes} but the box predictor of {det.weights} has "
                f"{in_file} classes: evaluated, its predictors would be new; leave detection.num_classes at 0"
            )
        return resolve_label_space(det.labels, category_ids, det.num_classes, data=data)
    if in_file is not None:
        source = f"the box predictor of {det.weights}"
        return resolve_label_space(
            det.labels, category_ids, in_file, source=source, data=data, strict=evaluating
        )
    return resolve_label_space(det.labels, category_ids, data=data)


@dataclass
class TrainedDetector:
    """A trained detector in eval mode with what it was trained with: its ``config`` (with the
    overrides given to :func:`load_trained_detector`), classes and ``label_space`` (label ->
    category: ``label_space.label_to_category``); ``changes`` lists the overridden settings that
    changed the model, as ``detection.min_size: [800] -> [600]``."""

    model: nn.Module
    config: Config
    class_names: list[str]  # in ascending category id, as category_ids
    category_ids: list[int]
    keypoint_names: list[str]
    label_space: LabelSpace | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def label_to_category(self) -> dict[int, int]:
        """Each label that names a category, to its COCO category id (contiguous without a
        stored label space)."""
        if self.label_space is not None:
            return self.label_space.label_to_category
        return {i + 1: c for i, c in enumerate(self.category_ids)}

    @property
    def label_names(self) -> dict[int, str]:
        """Each label that names a category, to the category's name."""
        if not self.category_ids:  # a checkpoint without its ids: contiguous names
            return {i + 1: name for i, name in enumerate(self.class_names)}
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        return {label: names[c] for label, c in self.label_to_category.items()}

    def check_categories(self, category_ids: Sequence[int], data: str) -> None:
        """Refuse data (``data``: its name for the message) whose categories the labels do not
        mean: contiguous labels need the trained categories exactly, category-id labels a subset
        of them. Checkpoints that did not store their categories are not checked."""
        if not self.category_ids:
            return
        ids, trained = list(category_ids), list(self.category_ids)
        space = self.label_space.kind if self.label_space is not None else "contiguous"
        if space == "contiguous" and ids != trained:
            raise InvalidValueError(
                f"{data} has the categories {ids} but the model was trained on the categories {trained} "
                "(contiguous labels: the k-th category of each)"
            )
        unknown = sorted(set(ids) - set(trained))
        if space == "category_ids" and unknown:
            raise InvalidValueError(
                f"{data} has the categories {unknown}, which the model was not trained on (its "
                f"categories: {trained})"
            )


# the settings that shape a detector (besides its classes and keypoints); weights and
# weights_backbone only say where weights came from, trainable_backbone_layers what trains
_MODEL_SETTINGS = ("model", "nonlocal_options", "model_options", "min_size", "max_size")


def _misfit(model: nn.Module, state: dict[str, Tensor]) -> str:
    """What of ``state`` does not fit ``model`` (empty when it fits exactly)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    parts = [
        f"{len(missing)} tensors missing, e.g. {missing[:3]}" if missing else "",
        f"{len(unexpected)} tensors with no place, e.g. {unexpected[:3]}" if unexpected else "",
        f"{len(shapes)} shapes differ, e.g. {shapes[:2]}" if shapes else "",
    ]
    return "; ".join(p for p in parts if p)


def load_trained_detector(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", *, overrides: Sequence[str] = ()
) -> TrainedDetector:
    """Rebuild a detector from a training checkpoint of ``task: detection`` (``iter_*.pt``,
    ``best.pt``): its config, weights, classes, keypoint names and label space.

    ``overrides`` (``section.key=value``) apply to the checkpoint's config and to the model built
    from it: ``detection.min_size``/``max_size`` change its transform, ``model_options`` its
    heads' thresholds, ``mask_threshold`` and the data paths what is evaluated. A setting whose
    change the weights do not fit (``model``, ``nonlocal_options``, ``num_classes``, ...) is an
    error naming it; ``labels`` may not change the checkpoint's label space."""
    weights = read_model_file(checkpoint, kinds=("checkpoint",))
    if weights.config is None or weights.config.get("task") != "detection":
        task = None if weights.config is None else weights.config.get("task")
        raise InvalidValueError(f"{checkpoint} is not a detection training checkpoint (task {task!r})")
    saved = config_from_dict(dict(weights.config))
    cfg = config_from_dict(apply_overrides(config_to_dict(saved), list(overrides))) if overrides else saved
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    names = list(raw.get("class_names") or [])
    ids = list(raw.get("category_ids") or [])
    keypoints = list(raw.get("keypoint_names") or [])
    kind, num_classes = raw.get("labels") or "contiguous", int(raw.get("num_classes") or len(names) + 1)
    space = LabelSpace(kind, tuple(ids), num_classes, f"as trained (stored in {checkpoint})")
    det, old = cfg.detection, saved.detection
    if det.labels != old.labels and det.labels not in ("auto", kind):
        raise ConfigError(
            f"detection.labels={det.labels}: {checkpoint} was trained with {kind} labels, which its "
            "predictors keep; leave detection.labels out"
        )
    if det.num_classes != old.num_classes and det.num_classes not in (0, num_classes):
        raise ConfigError(
            f"detection.num_classes={det.num_classes}: the predictors of {checkpoint} have {num_classes} "
            "classes and its weights fit no other count; leave detection.num_classes out"
        )
    changes = [
        f"detection.{name}: {getattr(old, name)!r} -> {getattr(det, name)!r}"
        for name in _MODEL_SETTINGS
        if getattr(old, name) != getattr(det, name)
    ]
    info = model_info(det.model, "detector")
    model, _ = build_detector_from_config(
        det,
        num_classes,
        len(keypoints) if info.has_keypoints else None,
        load_weights=False,
        pretrained=bool(old.weights or old.weights_backbone),  # the checkpoint's BN form
    )
    misfit = _misfit(model, weights.state)
    if misfit:
        changed = [c.split(":", 1)[0] for c in changes]
        raise ConfigError(
            f"{checkpoint}: its weights do not fit the model with {', '.join(changed)} overridden "
            f"({misfit}); these settings shape the trained weights: leave them out"
            if changed
            else f"{checkpoint}: its weights do not fit the model its config builds ({misfit})"
        )
    model.load_state_dict(weights.state)
    model.to(device).eval()
    return TrainedDetector(model, cfg, names, ids, keypoints, space, changes)


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as float32 ``(3, H, W)`` RGB in [0, 1], upright by its EXIF orientation (as
    viewers show it and detectron2's ``read_image`` reads it), decoded as the data sets decode
    (:func:`~nonlocalnet.detection.coco.load_image`); an unusable file is an error saying why."""
    image = load_image(path, exif=True)
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
