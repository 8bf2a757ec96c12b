"""A trained detector and what it was trained with (:class:`TrainedDetector`, which
``nonlocalnet.tasks.detection.setup.load_trained_detector`` rebuilds from a checkpoint), and
:func:`predict_image` (one image file through a detector)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nonlocalnet.detection.coco import load_image
from nonlocalnet.detection.labels import LabelSpace
from nonlocalnet.engine.config import Config
from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = ["TrainedDetector", "predict_image", "read_image"]


@dataclass
class TrainedDetector:
    """A trained detector in eval mode with what it was trained with: its ``config`` (with the
    overrides given to :func:`~nonlocalnet.tasks.detection.load_trained_detector`), classes,
    ``label_space`` (label -> category: ``label_space.label_to_category``) and
    ``mask_threshold``; ``changes`` lists the overridden settings that changed the model, as
    ``detection.min_size: [800] -> [600]``."""

    model: nn.Module
    config: Config
    class_names: list[str]  # in ascending category id, as category_ids
    category_ids: list[int]
    keypoint_names: list[str]
    label_space: LabelSpace | None = None
    changes: list[str] = field(default_factory=list)
    mask_threshold: float = 0.5  # a pixel of a mask: probability above it (detection.mask_threshold)

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
