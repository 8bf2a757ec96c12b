"""What the detection demo's non-local block attends to: for each held-out object, the block's
attention from the object's centre, and how much of it lands on the key marker that decides the
object's category (against the key's share of the key grid, the uniform level); and whether a
detector's labels follow the key: the same image with the key's colour swapped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from nonlocalnet.demo.detection_data import CocoSplit
from nonlocalnet.detection.models import nonlocal_blocks
from nonlocalnet.detection.trained import predict_image, read_image
from nonlocalnet.engine import CheckpointManager
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.tasks.detection.setup import load_trained_detector
from nonlocalnet.viz.detections import plot_detection_attention

__all__ = ["attention_study", "block_input", "key_swap_study", "object_attention", "swap_key_colour"]


def block_input(model: torch.nn.Module, image: Tensor) -> tuple[Tensor, float]:
    """The input of the detector's (first) non-local block for ``image`` and the factor by which
    the detector's transform resized the image (feature positions are in resized pixels)."""
    block = next(iter(nonlocal_blocks(model).values()))
    seen: dict[str, Any] = {}
    hook = block.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            transform: Any = model.transform  # torchvision's GeneralizedRCNNTransform
            resized, _ = transform([image])
            model([image])
    finally:
        hook.remove()
    scale = resized.image_sizes[0][0] / image.shape[-2]
    return seen["x"], scale


def object_attention(
    model: torch.nn.Module, image: Tensor, query_xy: tuple[float, float]
) -> tuple[Tensor, tuple[int, int]]:
    """The block's attention weights over its key grid ``(h', w')`` from the feature position
    under image pixel ``query_xy``, and the feature map's stride in image pixels."""
    block = next(iter(nonlocal_blocks(model).values()))
    x, scale = block_input(model, image)
    h, w = x.shape[-2:]
    padded_h = -(-round(image.shape[-2] * scale) // 32) * 32  # the transform pads to a multiple of 32
    stride = round(padded_h / h)
    qy = min(int(query_xy[1] * scale // stride), h - 1)
    qx = min(int(query_xy[0] * scale // stride), w - 1)
    with torch.no_grad():
        weights = block.attention_map(x, [(qy, qx)])[0, 0]
    key_stride = stride * (h // weights.shape[-2])
    return weights, (round(key_stride / scale), round(stride / scale))


def _key_cells(key_box: list[float], grid: tuple[int, int], stride: int) -> Tensor:
    """A mask of the key-grid cells that hold any pixel of the key marker's box (x, y, w, h)."""
    x, y, w, h = key_box
    mask = torch.zeros(grid, dtype=torch.bool)
    mask[
        int(y // stride) : int((y + h - 1) // stride) + 1, int(x // stride) : int((x + w - 1) // stride) + 1
    ] = True
    return mask


def attention_study(
    run_dir: Path, split: CocoSplit, figure: Path, *, max_images: int = 100
) -> dict[str, Any]:
    """Attention from every object of the first ``max_images`` images of ``split`` with the
    trained non-local detector of ``run_dir``: the mean share on the key marker's cells, the
    share those cells would get from uniform attention, and how often the key holds the
    attention's maximum; writes the figure of the first image's first object."""
    checkpoint = CheckpointManager(Path(run_dir) / "checkpoints", 1).latest()
    if checkpoint is None:
        raise MissingFileError(f"no checkpoint in {run_dir}/checkpoints")
    model = load_trained_detector(checkpoint).model
    data = json.loads(Path(split.annotations).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    shares, uniform, argmax_hits = [], [], 0
    drawn = False
    for record in data["images"][:max_images]:
        image = read_image(Path(split.images) / record["file_name"])
        for ann in by_image.get(record["id"], []):
            x, y, w, h = ann["bbox"]
            weights, (key_stride, _) = object_attention(model, image, (x + w / 2, y + h / 2))
            cells = _key_cells(record["key"]["bbox"], (weights.shape[0], weights.shape[1]), key_stride)
            shares.append(float(weights[cells].sum()))
            uniform.append(float(cells.float().mean()))
            argmax_hits += bool(cells.flatten()[weights.flatten().argmax()])
            if not drawn:
                kx, ky, kw, kh = record["key"]["bbox"]
                fig = plot_detection_attention(
                    image,
                    weights,
                    (x + w / 2, y + h / 2),
                    box=(x, y, x + w, y + h),
                    key_xy=(kx + kw / 2, ky + kh / 2),
                    title="non-local attention from the object's centre (layer3.0)",
                )
                fig.savefig(figure, dpi=120)
                drawn = True
    n = max(len(shares), 1)
    return {
        "objects": len(shares),
        "key_share": sum(shares) / n,
        "uniform_share": sum(uniform) / n,
        "argmax_on_key": argmax_hits / n,
    }


def swap_key_colour(image: Tensor, key_box: list[float]) -> Tensor:
    """``image`` (3, H, W) with the red and green channels exchanged inside the key marker's box
    (x, y, w, h; every pixel it touches, clipped to the image): the demo's red key (230, 40, 40)
    becomes a green one (40, 230, 40; the palette's green is (40, 200, 60)) and the reverse; the
    grey background in the box stays grey, and nothing outside the box changes."""
    x, y, w, h = key_box
    height, width = image.shape[-2:]
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    out = image.clone()
    out[0, y0:y1, x0:x1], out[1, y0:y1, x0:x1] = image[1, y0:y1, x0:x1], image[0, y0:y1, x0:x1]
    return out


def _label_of(prediction: dict, box: Tensor, iou: float) -> int | None:
    """The label of the highest-scoring detection overlapping ``box`` (xyxy) by ``iou``."""
    if len(prediction["boxes"]) == 0:
        return None
    overlaps = box_iou(box[None], prediction["boxes"])[0] >= iou
    if not overlaps.any():
        return None
    scores = torch.where(overlaps, prediction["scores"], torch.full_like(prediction["scores"], -1.0))
    return int(prediction["labels"][scores.argmax()])


def key_swap_study(
    run_dir: Path, split: CocoSplit, *, max_images: int = 100, iou: float = 0.5
) -> dict[str, Any]:
    """Each held-out object's predicted label (the best detection at IoU >= ``iou``) in its image
    and in the image with the key's colour swapped (:func:`swap_key_colour`). A detector that
    reads the key changes the label (``changed``: share of the objects found in both) and is
    right in both (``right``; ``right_swapped``: the other of the data's two categories); one
    that cannot see the key keeps it. Needs a two-category data set (the demo's key colours)."""
    checkpoint = CheckpointManager(Path(run_dir) / "checkpoints", 1).latest()
    if checkpoint is None:
        raise MissingFileError(f"no checkpoint in {run_dir}/checkpoints")
    trained = load_trained_detector(checkpoint)
    if len(trained.category_ids) != 2:
        raise InvalidValueError(
            f"the key-swap study needs a detector of 2 categories (the key's colours); {checkpoint} "
            f"has category ids {trained.category_ids}"
        )
    category = {i + 1: c for i, c in enumerate(trained.category_ids)}
    other = dict(zip(trained.category_ids, reversed(trained.category_ids), strict=True))
    data = json.loads(Path(split.annotations).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    found, changed, right, right_swapped, objects = 0, 0, 0, 0, 0
    for record in data["images"][:max_images]:
        anns = by_image.get(record["id"], [])
        if not anns:
            continue
        image = read_image(Path(split.images) / record["file_name"])
        original = predict_image(trained.model, image)
        swapped = predict_image(trained.model, swap_key_colour(image, record["key"]["bbox"]))
        for ann in anns:
            objects += 1
            x, y, w, h = ann["bbox"]
            box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
            a, b = _label_of(original, box, iou), _label_of(swapped, box, iou)
            if a is None or b is None:
                continue
            found += 1
            changed += a != b
            right += category.get(a) == ann["category_id"]
            right_swapped += category.get(b) == other.get(ann["category_id"])
    n = max(found, 1)
    return {
        "objects": objects,
        "found": found,
        "changed": changed / n,
        "right": right / n,
        "right_swapped": right_swapped / n,
    }
