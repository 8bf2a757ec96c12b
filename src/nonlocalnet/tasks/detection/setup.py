"""The detection task's model from its config: :func:`build_detector_from_config` (what ``task:
detection`` trains), :func:`detector_label_space` (what its labels mean for the data) and
:func:`load_trained_detector` (a training checkpoint back to a model, its config, classes and
label space, with config overrides applied to the rebuilt model). Needs the ``detection`` extra."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nonlocalnet.detection.labels import LabelSpace, resolve_label_space, weights_num_classes
from nonlocalnet.detection.models import build_detector, load_detector_weights
from nonlocalnet.detection.trained import TrainedDetector
from nonlocalnet.engine.config import ConfigError, apply_overrides, config_to_dict
from nonlocalnet.engine.task import config_from_dict
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.models.model_file import read_model_file
from nonlocalnet.models.pretrained import resolve_weights
from nonlocalnet.models.registry import model_info
from nonlocalnet.tasks.detection.config import DetectionConfig, DetectionTaskConfig

__all__ = [
    "build_detector_from_config",
    "detector_label_space",
    "load_trained_detector",
    "misfit",
    "weights_path",
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
        assert path is not None  # det.weights is set
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


# the settings that shape a detector (besides its classes and keypoints); weights and
# weights_backbone only say where weights came from, trainable_backbone_layers what trains
_MODEL_SETTINGS = ("model", "nonlocal_options", "model_options", "min_size", "max_size")


def misfit(model: nn.Module, state: dict[str, Tensor]) -> str:
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


def _detection_config(data: dict[str, Any]) -> DetectionTaskConfig:
    cfg = config_from_dict(data)
    if not isinstance(cfg, DetectionTaskConfig):
        raise ConfigError(f"task: {cfg.task!r}: not a detection config")
    return cfg


def _check_label_overrides(
    det: DetectionConfig, old: DetectionConfig, kind: str, num_classes: int, checkpoint: str | os.PathLike
) -> None:
    """Overrides may not change the label space or the class count a checkpoint was trained with."""
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
    saved = _detection_config(dict(weights.config))
    cfg = _detection_config(apply_overrides(config_to_dict(saved), list(overrides))) if overrides else saved
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    names = list(raw.get("class_names") or [])
    ids = list(raw.get("category_ids") or [])
    keypoints = list(raw.get("keypoint_names") or [])
    kind, num_classes = raw.get("labels") or "contiguous", int(raw.get("num_classes") or len(names) + 1)
    space = LabelSpace(kind, tuple(ids), num_classes, f"as trained (stored in {checkpoint})")
    det, old = cfg.detection, saved.detection
    _check_label_overrides(det, old, kind, num_classes, checkpoint)
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
    problem = misfit(model, weights.state)
    if problem:
        changed = [c.split(":", 1)[0] for c in changes]
        raise ConfigError(
            f"{checkpoint}: its weights do not fit the model with {', '.join(changed)} overridden "
            f"({problem}); these settings shape the trained weights: leave them out"
            if changed
            else f"{checkpoint}: its weights do not fit the model its config builds ({problem})"
        )
    model.load_state_dict(weights.state)
    model.to(device).eval()
    return TrainedDetector(
        model, cfg, names, ids, keypoints, space, changes, mask_threshold=cfg.detection.mask_threshold
    )
