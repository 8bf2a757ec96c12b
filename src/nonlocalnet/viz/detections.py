"""Detections drawn on an image (boxes, masks, keypoints) and a query's non-local attention over it.

Coordinates are continuous image pixels, pixel ``i`` covering ``[i, i + 1)`` (COCO's and
torchvision's convention): a box ``(0, 0, W, H)`` is the whole image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.viz.png import save_png

__all__ = ["draw_detections", "plot_detection_attention", "save_detections"]

_MASK_ALPHA = 0.35


def _numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:
        raise InvalidTypeError(f"{name} must be a tensor or an array, got {type(value).__name__}") from e


def _image_hwc(image: Any) -> np.ndarray:
    """``(3, H, W)`` tensor (float in [0, 1] or uint8) or ``(H, W, 3)`` array -> ``(H, W, 3)``
    float in [0, 1]."""
    is_tensor = hasattr(image, "detach")
    array = _numpy(image, "image")
    if is_tensor:
        if array.ndim != 3 or array.shape[0] != 3:
            raise InvalidValueError(f"an image tensor must have shape (3, H, W), got {tuple(array.shape)}")
        array = array.transpose(1, 2, 0)
    elif array.ndim != 3 or array.shape[2] != 3:
        raise InvalidValueError(f"an image array must have shape (H, W, 3), got {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidValueError(f"image must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _class_color(label: int) -> tuple[float, float, float]:
    """tab10 from its first colour for label 1 (blue, orange, ...); grey for the background."""
    if label <= 0:
        return (0.6, 0.6, 0.6)
    return tuple(matplotlib.colormaps["tab10"]((label - 1) % 10)[:3])  # type: ignore[return-value]


def _prediction_arrays(
    prediction: Mapping[str, Any], height: int, width: int, num_classes: int
) -> dict[str, np.ndarray]:
    """Validated numpy views of a prediction (or a target: ``scores`` may be absent)."""
    if not isinstance(prediction, Mapping):
        raise InvalidTypeError(f"prediction must be a dict of tensors, got {type(prediction).__name__}")
    for key in ("boxes", "labels"):
        if key not in prediction:
            raise InvalidValueError(f"prediction has no {key!r} (it needs boxes (n, 4) and labels (n,))")
    boxes = _numpy(prediction["boxes"], "boxes").astype(np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidValueError(f"boxes must have shape (n, 4) (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    n = len(boxes)
    out: dict[str, np.ndarray] = {"boxes": boxes}
    labels = _numpy(prediction["labels"], "labels")
    scores = _numpy(prediction["scores"], "scores") if "scores" in prediction else np.ones(n)
    for key, value in (("labels", labels), ("scores", scores)):
        if value.shape != (n,):
            raise InvalidValueError(f"{key} must have shape (n,) = ({n},), got {tuple(value.shape)}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise InvalidValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidValueError(
            f"labels must index class_names (0 <= label < {num_classes}), got labels in "
            f"[{labels.min()}, {labels.max()}]"
        )
    out["labels"], out["scores"] = labels.astype(np.int64), scores.astype(np.float64)
    if prediction.get("masks") is not None:
        masks = _numpy(prediction["masks"], "masks")
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.shape != (n, height, width):
            raise InvalidValueError(
                f"masks must have shape (n, 1, H, W) or (n, H, W) = ({n}, {height}, {width}), got "
                f"{tuple(_numpy(prediction['masks'], 'masks').shape)}"
            )
        scale = 255.0 if masks.dtype == np.uint8 and masks.size and masks.max() > 1 else 1.0
        out["masks"] = masks.astype(np.float32) / scale
    if prediction.get("keypoints") is not None:
        keypoints = _numpy(prediction["keypoints"], "keypoints").astype(np.float64)
        if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
            raise InvalidValueError(
                f"keypoints must have shape (n, K, 3) = ({n}, K, 3) (x, y, visibility), got "
                f"{tuple(keypoints.shape)}"
            )
        out["keypoints"] = keypoints
    return out


def _mask_overlay(
    pred: dict[str, np.ndarray], keep: np.ndarray, mask_threshold: float, height: int, width: int
) -> np.ndarray:
    """An ``(H, W, 4)`` RGBA layer: the masks of the detections ``keep``, each in its class colour."""
    overlay = np.zeros((height, width, 4), np.float32)
    for i in keep:
        on = pred["masks"][i] >= mask_threshold
        overlay[on, :3] = _class_color(int(pred["labels"][i]))
        overlay[on, 3] = _MASK_ALPHA
    return overlay


def draw_detections(
    image: Any,
    prediction: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    keypoint_names: Sequence[str] | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    mask_threshold: float = 0.5,
    title: str | None = None,
) -> Figure:
    """The image with the detections scoring at least ``score_threshold``: boxes labelled
    ``"name score"``, masks as semi-transparent fills, keypoints joined by the ``skeleton``
    (0-based keypoint pairs), one colour per class.

    ``image``: a ``(3, H, W)`` tensor (float in [0, 1] or uint8) or an ``(H, W, 3)`` array;
    ``prediction``: ``boxes`` ``(n, 4)`` xyxy, ``labels`` ``(n,)`` (indices into
    ``class_names``, 0 the background), ``scores`` ``(n,)`` (absent: a target, all drawn),
    optional ``masks`` ``(n, 1, H, W)`` or ``(n, H, W)`` (probabilities, or uint8 0-255 / 0-1)
    and ``keypoints`` ``(n, K, 3)`` (x, y, visibility; visibility > 0 is drawn).
    """
    rgb = _image_hwc(image)
    height, width = rgb.shape[:2]
    if not 0.0 <= score_threshold <= 1.0:
        raise InvalidValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    pred = _prediction_arrays(prediction, height, width, len(class_names))
    keep = np.flatnonzero(pred["scores"] >= score_threshold)
    num_kp = pred["keypoints"].shape[1] if "keypoints" in pred else 0
    pairs = _skeleton_pairs(num_kp if "keypoints" in pred else None, keypoint_names, skeleton)
    size = 5.0
    fig = Figure(figsize=(size * width / max(height, width) + 0.2, size * height / max(height, width) + 0.5))
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    extent = (0, width, height, 0)
    ax.imshow(rgb, extent=extent, interpolation="nearest")
    if "masks" in pred and len(keep):
        overlay = _mask_overlay(pred, keep, mask_threshold, height, width)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
    fontsize = 7 if len(keep) < 30 else 5
    for i in keep:
        label = int(pred["labels"][i])
        text = (
            class_names[label]
            if "scores" not in prediction
            else f"{class_names[label]} {pred['scores'][i]:.2f}"
        )
        _draw_box(ax, pred["boxes"][i], text, _class_color(label), fontsize)
        if "keypoints" in pred:
            _draw_keypoints(ax, pred["keypoints"][i], pairs, _class_color(label))
    if keypoint_names is not None and num_kp:
        ax.set_xlabel("keypoints: " + ", ".join(keypoint_names), fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{len(keep)} detections with score >= {score_threshold:g}", fontsize=9)
    return fig


def _skeleton_pairs(
    num_kp: int | None, keypoint_names: Sequence[str] | None, skeleton: Sequence[tuple[int, int]] | None
) -> list[tuple[int, ...]]:
    """The skeleton's pairs of keypoint indices, checked against ``num_kp`` keypoints (None: the
    prediction has none, nothing is joined), as are the keypoint names."""
    if keypoint_names is not None and num_kp is not None and len(keypoint_names) != num_kp:
        raise InvalidValueError(f"keypoint_names has {len(keypoint_names)} names for {num_kp} keypoints")
    if skeleton is None or not num_kp:
        return []
    pairs = [tuple(int(i) for i in p) for p in skeleton]
    if any(len(p) != 2 or not all(0 <= i < num_kp for i in p) for p in pairs):
        raise InvalidValueError(f"skeleton must be 0-based pairs of keypoint indices < {num_kp}, got {pairs}")
    return pairs


def _draw_box(
    ax: Axes, box: np.ndarray, text: str, color: tuple[float, float, float], fontsize: float
) -> None:
    """An xyxy box outlined in ``color`` with ``text`` on a label above its top-left corner."""
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.5))
    ax.text(
        x0,
        y0,
        text,
        color="white",
        fontsize=fontsize,
        va="bottom",
        bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
        clip_on=True,
    )


def _draw_keypoints(
    ax: Axes, kp: np.ndarray, pairs: list[tuple[int, ...]], color: tuple[float, float, float]
) -> None:
    """Keypoints ``(K, 3)`` with visibility > 0 as dots, joined where both ends of a pair are."""
    seen = kp[:, 2] > 0
    for a, b in pairs:
        if seen[a] and seen[b]:
            ax.plot(kp[[a, b], 0], kp[[a, b], 1], color=color, lw=1.0, alpha=0.9)
    ax.plot(kp[seen, 0], kp[seen, 1], ls="none", marker="o", ms=3, mfc=color, mec="white", mew=0.6)


def save_detections(path: str | os.PathLike, image: Any, prediction: Mapping[str, Any], **kw: Any) -> Path:
    """:func:`draw_detections` written atomically to ``path`` as a PNG; returns ``path``."""
    fig = draw_detections(image, prediction, **kw)
    return save_png(fig, path, dpi=120)


def plot_detection_attention(
    image: Any,
    attention: Any,
    query_xy: tuple[float, float],
    *,
    box: Sequence[float] | None = None,
    key_xy: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """The image, and next to it the attention ``(h, w)`` of one query over the key grid (which
    covers the image uniformly) as a heat map over the image: the query point ``(x, y)``
    (pixels) as a cyan circle, its ``box`` (xyxy) outlined, ``key_xy`` (e.g. the demo's key
    marker) as a white star and an arrow from the query to the most attended cell."""
    rgb = _image_hwc(image)
    height, width = rgb.shape[:2]
    weights = _numpy(attention, "attention").astype(np.float64)
    if weights.ndim != 2 or 0 in weights.shape:
        raise InvalidValueError(f"attention must have shape (h, w), got {tuple(weights.shape)}")
    if len(query_xy) != 2:
        raise InvalidValueError(f"query_xy must be (x, y), got {query_xy!r}")
    if box is not None and len(box) != 4:
        raise InvalidValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    h, w = weights.shape
    extent = (0, width, height, 0)
    top = float(weights.max()) or 1.0
    cy, cx = np.unravel_index(int(weights.argmax()), weights.shape)
    peak = ((cx + 0.5) * width / w, (cy + 0.5) * height / h)

    aspect = height / width
    fig = Figure(figsize=(7.0, 3.5 * aspect + 0.7), layout="constrained")
    ax_image, ax_heat = fig.subplots(1, 2)
    ax_image.imshow(rgb, extent=extent, interpolation="nearest")
    ax_heat.imshow(rgb, extent=extent, interpolation="nearest")
    heat = ax_heat.imshow(
        weights, cmap="magma", alpha=0.6, vmin=0, vmax=top, extent=extent, interpolation="nearest"
    )
    fig.colorbar(heat, ax=ax_heat, fraction=0.046, label="attention weight")
    qx, qy = query_xy
    for ax in (ax_image, ax_heat):
        if box is not None:
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.2))
        ax.plot([qx], [qy], marker="o", ms=7, mfc="none", mec="cyan", mew=2)
        if key_xy is not None:
            ax.plot([key_xy[0]], [key_xy[1]], marker="*", ms=10, mfc="none", mec="white", mew=1.2)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_image.set_title("image: query (cyan)" + (", key (star)" if key_xy is not None else ""), fontsize=8)
    ax_heat.set_title(f"attention over the {h}x{w} grid; arrow: maximum", fontsize=8)
    ax_heat.annotate(
        "", xy=peak, xytext=(qx, qy), arrowprops={"arrowstyle": "-|>", "color": "cyan", "lw": 1.2}
    )
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
