"""Label spaces: what a detector's class index means for a COCO-format data set.

- ``contiguous``: label ``k`` is the k-th category in ascending id (``1..K``, 0 the background),
  ``num_classes = K + 1`` (detectron2's mapping, and this project's for data of its own).
- ``category_ids``: the label is the COCO category id itself, ``num_classes = max id + 1``, as
  torchvision's COCO weights (91 outputs for COCO's 80 categories, whose ids run 1..90 with
  gaps) and its reference training (``references/detection/coco_utils.py`` keeps the ids) do.
  Labels that are no category of the data (COCO's 10 unused ids) have no category: their
  detections are dropped before COCOeval and counted
  (:attr:`~nonlocalnet.detection.evaluate.DetectionEvaluation.dropped`).
- ``auto``: :func:`resolve_label_space` picks one where the class count decides it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from nonlocalnet.engine.config import ConfigError
from nonlocalnet.models.model_file import read_model_file

__all__ = ["LABEL_SPACES", "LabelSpace", "resolve_label_space", "weights_num_classes"]

LABEL_SPACES = ("auto", "contiguous", "category_ids")
_BOX_CLASSES = "roi_heads.box_predictor.cls_score.weight"


@dataclass(frozen=True)
class LabelSpace:
    """A resolved label space: ``kind`` (``contiguous`` or ``category_ids``), the data's
    ``category_ids`` (ascending), the detector's ``num_classes`` (background included) and
    ``reason``, why this one (for the run's report)."""

    kind: str
    category_ids: tuple[int, ...]
    num_classes: int
    reason: str = ""

    @property
    def label_to_category(self) -> dict[int, int]:
        """Each label that has a category, to its COCO category id."""
        if self.kind == "category_ids":
            return {c: c for c in self.category_ids}
        return {i + 1: c for i, c in enumerate(self.category_ids)}

    @property
    def labels_without_category(self) -> int:
        """How many of the detector's labels (background aside) name no category of the data."""
        return self.num_classes - 1 - len(self.category_ids)

    def summary(self) -> str:
        """One line for the run's report: the space, the class count, and why."""
        k = len(self.category_ids)
        if self.kind == "category_ids":
            top = self.category_ids[-1] if k else 0
            text = (
                f"labels: category_ids (label = COCO category id; {self.num_classes} classes for {k} "
                f"categories of ids up to {top}"
            )
            if self.labels_without_category > 0:
                text += (
                    f"; {self.labels_without_category} labels name no category: their detections are "
                    "dropped from the evaluation and counted"
                )
            text += ")"
        else:
            text = (
                f"labels: contiguous (label k = the k-th category by id; {self.num_classes} classes = "
                f"{k} categories + background)"
            )
        return f"{text}; {self.reason}" if self.reason else text


def weights_num_classes(path: str | os.PathLike) -> int | None:
    """The class count of a detector weights file: its box predictor's rows (``None`` when it
    has no box predictor)."""
    state = read_model_file(path, kinds=("safetensors", "checkpoint", "state_dict")).state
    weight = state.get(_BOX_CLASSES)
    return None if weight is None else int(weight.shape[0])


def _auto_space(
    ids: tuple[int, ...], n: int | None, counted: str, data: str, strict: bool
) -> tuple[str, str, int | None]:
    """``auto``'s choice for sorted category ``ids`` and ``n`` classes: ``(kind, reason, n)``,
    ``n`` None when the count fits neither space and ``strict`` is false."""
    k, top = len(ids), ids[-1]
    contiguous, by_id = k + 1, top + 1
    if n is None:
        return "contiguous", "auto: no class count given", n
    if n == contiguous:
        return "contiguous", f"auto: {counted} = {k} categories + background", n
    if n == by_id:
        return "category_ids", f"auto: {counted} = the largest category id {top} + 1", n
    if not strict:
        return "contiguous", f"auto: {counted}, fitting neither space: its predictors are new", None
    hint = (
        f"set detection.labels=category_ids if its labels are COCO category ids (labels without "
        f"a category in {data} are then dropped and counted)"
        if n > by_id
        else "these weights were trained on other categories"
    )
    raise ConfigError(
        f"detection.labels auto: {counted}, neither the {k} categories of {data} + 1 ({contiguous}, "
        f"contiguous labels) nor their largest id {top} + 1 ({by_id}, labels = category ids); {hint}"
    )


def resolve_label_space(
    labels: str,
    category_ids: Sequence[int],
    num_classes: int | None = None,
    *,
    source: str = "detection.num_classes",
    data: str = "the data",
    strict: bool = True,
) -> LabelSpace:
    """The label space ``labels`` (:data:`LABEL_SPACES`) for data of ``category_ids`` and a
    detector of ``num_classes`` classes (background included; ``None``: not known, the space
    decides). ``source`` says where ``num_classes`` comes from and ``data`` names the data, for
    the messages.

    ``auto`` picks ``category_ids`` when ``num_classes`` is the largest id + 1 but not the
    category count + 1, ``contiguous`` when it is the category count + 1 (or unknown); ids that
    are exactly ``1..K`` make the two the same. Any other count is a :class:`ConfigError`
    saying what to set, unless ``strict`` is false (a count read from weights to fine-tune:
    the predictors are then re-initialised to the space's own count). With ``strict``,
    ``contiguous`` needs exactly ``K + 1`` classes and ``category_ids`` at least max id + 1.
    """
    if labels not in LABEL_SPACES:
        raise ConfigError(f"detection.labels: {labels!r} is not one of {LABEL_SPACES}")
    ids = tuple(sorted(int(c) for c in category_ids))
    if not ids:
        raise ConfigError(f"detection.labels: {data} declares no categories")
    k, top = len(ids), ids[-1]
    contiguous, by_id = k + 1, top + 1
    same = ids == tuple(range(1, k + 1))
    n = num_classes
    counted = f"{source} has {n} classes"
    if labels == "auto":
        kind, reason, n = _auto_space(ids, n, counted, data, strict)
        if same and kind == "contiguous":
            reason += f" (ids 1..{k}: contiguous labels are the category ids)"
    else:
        kind, reason = labels, f"detection.labels={labels}"
    if kind == "category_ids" and ids[0] < 1:
        raise ConfigError(
            f"detection.labels category_ids: {data} has category id {ids[0]}, but label 0 is the "
            "background; labels can be category ids only where every id is >= 1"
        )
    if kind == "contiguous":
        if n is not None and n != contiguous and strict:
            hint = "; set detection.labels=category_ids if its labels are category ids" if n >= by_id else ""
            raise ConfigError(
                f"detection.labels contiguous: {data} has {k} categories, so {contiguous} classes with the "
                f"background, but {counted}{hint}"
            )
        n = contiguous
    elif n is None or n < by_id:
        if n is not None and strict:
            raise ConfigError(
                f"detection.labels category_ids: the largest category id of {data} is {top}, so at least "
                f"{by_id} classes, but {counted}"
            )
        n = by_id
    return LabelSpace(kind, ids, n, reason)
