"""The detection task's config: :class:`DetectionTaskConfig` (``task: detection``) adds the
``detection`` section (:class:`DetectionConfig`) to the engine's sections. Importable without the
``detection`` extra."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nonlocalnet.engine.config import Config, ConfigError

__all__ = ["DetectionConfig", "DetectionTaskConfig"]


@dataclass
class DetectionConfig:
    """The detector and its COCO-format data, the ``detection`` section of ``task: detection``
    (:func:`nonlocalnet.detection.build_detector`).

    ``model``: a detector name (``nonlocalnet models``); ``num_classes`` counts the background
    as torchvision does (0: the weights' class count, else the label space's: the data's
    categories + 1, or the largest category id + 1). ``weights``: a whole detector's state
    dict file (torchvision's COCO ``.pth`` loads into the ``_nl`` models with only the block's
    keys new; predictors of another class count are re-initialised); ``weights_backbone``: an
    ImageNet ResNet state dict file. Either may also be a weights name (``nonlocalnet weights``:
    ``maskrcnn_resnet50_fpn_coco_v1``, ``resnet50_imagenet1k_v1``...), downloaded once into the
    weights cache. ``min_size``: one short side, or
    several for multi-scale training (one drawn per image, by torchvision's
    ``GeneralizedRCNNTransform``); evaluation uses the last.
    ``oks_sigmas``: one per keypoint (COCO's 17 when unset and the data has 17).
    ``keypoint_flip_map``: pairs of keypoint names a horizontal flip swaps (detectron2's
    ``keypoint_flip_map``; unset: paired by their left/right names, an ambiguous set is an error).
    ``min_keypoints_per_image``: keypoint training leaves out the images with fewer visible
    keypoints (torchvision's reference: 10; 0 keeps every image with an object).
    ``model_options``: more torchvision constructor keywords (``rpn_batch_size_per_image``...).
    ``nonlocal_options``: fields of :class:`~nonlocalnet.layers.NonLocalOptions` over the
    detectors' block (:data:`~nonlocalnet.detection.DETECTOR_BLOCK`: ``norm: none``, ...).
    ``labels``: what a class index means (:mod:`nonlocalnet.detection.labels`): ``contiguous``
    (label k = the k-th category by id, ``K + 1`` classes), ``category_ids`` (label = the COCO
    category id, max id + 1 classes, as torchvision's COCO weights) or ``auto`` (chosen from
    ``num_classes`` or the weights' class count; an ambiguous count is an error).
    """

    model: str = "maskrcnn_r50_fpn_nl"
    num_classes: int = 0
    labels: str = "auto"
    nonlocal_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    weights: str | None = None
    weights_backbone: str | None = None
    trainable_backbone_layers: int | None = None
    min_size: list = field(default_factory=lambda: [800])
    max_size: int = 1333
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    flip: bool = True
    aspect_ratio_grouping: bool = True
    oks_sigmas: list | None = None
    keypoint_flip_map: list | None = None
    min_keypoints_per_image: int = 10
    mask_threshold: float = 0.5

    def validate(self) -> None:
        _validate_detection(self)


@dataclass
class DetectionTaskConfig(Config):
    """A detection run (``task: detection``): the engine's sections
    (:class:`~nonlocalnet.engine.config.Config`: ``data`` holds the loader's settings) and the
    detector with its data (``detection``)."""

    task: str = "detection"
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        **Config.CHOICES,
        "detection.labels": ("auto", "contiguous", "category_ids"),
    }
    POSITIVE: ClassVar[frozenset[str]] = Config.POSITIVE | {"detection.max_size"}
    NON_NEGATIVE: ClassVar[frozenset[str]] = Config.NON_NEGATIVE | {"detection.min_keypoints_per_image"}


def _validate_detection(det: DetectionConfig) -> None:
    """The detection section's values (the detector name is checked when the task is built)."""
    if det.num_classes == 1 or det.num_classes < 0:
        raise ConfigError(
            f"detection.num_classes: {det.num_classes} (it counts the background: >= 2, or 0 for the "
            "weights' class count, else the data's by detection.labels)"
        )
    sizes = det.min_size
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise ConfigError(f"detection.min_size: expected a list of positive ints, got {sizes!r}")
    if det.trainable_backbone_layers is not None and not 0 <= det.trainable_backbone_layers <= 5:
        raise ConfigError(
            f"detection.trainable_backbone_layers: expected 0 to 5, got {det.trainable_backbone_layers}"
        )
    if not 0.0 <= det.mask_threshold <= 1.0:
        raise ConfigError(f"detection.mask_threshold: expected a value in [0, 1], got {det.mask_threshold}")
    if det.oks_sigmas is not None and not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in det.oks_sigmas
    ):
        raise ConfigError(f"detection.oks_sigmas: expected positive numbers, got {det.oks_sigmas!r}")
    pairs = det.keypoint_flip_map
    if pairs is not None and not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) and p[0] != p[1]
        for p in pairs
    ):
        raise ConfigError(
            f"detection.keypoint_flip_map: expected pairs of two different keypoint names, e.g. "
            f"[[l_eye, r_eye], [l_ear, r_ear]], got {pairs!r}"
        )
    for split in ("train", "val"):
        images, annotations = getattr(det, f"{split}_images"), getattr(det, f"{split}_annotations")
        if bool(images) != bool(annotations):
            raise ConfigError(
                f"detection.{split}_images and detection.{split}_annotations go together: set both or neither"
            )
