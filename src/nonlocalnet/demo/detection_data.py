"""The built-in data of ``nonlocalnet detect-demo``: "context shapes", where a key marker far
from every object decides the objects' categories.

Two rules (``ContextShapesConfig.rule``): ``"match"`` (the default here), an object's category is
whether its colour matches the key's; ``"key"`` (the demo's: ``demo.generator`` of
``nonlocalnet/demo/recipes/detection.yaml``), every object is drawn in the neutral colour
:data:`NEUTRAL` and its category is the key's colour (``red_key``, ``green_key``). Under both,
nothing inside an object's box says its category. The sections below describe ``"match"``;
``"key"`` draws the same random numbers, so it places the same key and objects and changes only
their colours and categories.

The task
--------
Every image (default 128x128 RGB) is a dark background (grey level ``background``) with i.i.d.
Gaussian pixel noise (``noise_std``), holding:

* one **key marker**: a plus sign of ``key_size`` pixels (default 10) in one of the palette's
  ``num_colors`` colours (default 2: red and green, from :data:`nonlocalnet.demo.synthetic.PALETTE`).
  It is *not* an annotated object;
* ``min_objects`` to ``max_objects`` **objects** (default 2 to 4): filled squares, discs and
  upward triangles with a side of ``object_size`` pixels (default 14 to 26), each in a colour of
  the same palette.

An object's category is **"match"** (category id 1) if its colour equals the key's colour, else
**"mismatch"** (id 2). The key colour is uniform; in an image of ``n`` objects exactly ``n // 2``
or ``(n + 1) // 2`` (at random) match; a matching object takes the key's colour, a mismatching
one a uniform other colour. So every object's colour is uniform and independent of its category:
the colour alone says nothing, and each category is half of all objects. With 2 colours the
colours of the other objects say nothing either (the key is either colour with the same
probability, whatever colours the objects show).

Geometry: every object's nearest pixel is at least ``min_key_distance`` pixels (default 56,
between pixel centres) from the key marker's nearest pixel (checked on the bounding squares, so
it holds with a margin for discs and triangles); objects keep ``object_gap`` background pixels
(default 2) between their bounding squares along x or y; everything lies inside the image.

Why it needs a non-local block
------------------------------
The demo's baseline detector is a tiny ResNet with an FPN whose ``layer3`` features see a window
of about +-40 pixels, and whose RoI heads read only the features inside a box. From any position
inside an object's box the key is at least 56 pixels away, out of sight: everything the heads see
(the object's shape, size, position, own colour, nearby objects) is independent of the category.
The best such a detector can do is to find the objects and give each both categories with a score
of about 0.5; with tied scores each category's precision is about one half at every recall, which
roughly halves the COCO AP of a detector that could tell them apart. A non-local block after
``layer3.0`` lets every position read every other position, the key's included (the attention
can select the plus-shaped marker by its features); the following convolutions then compare
the two colours at the object's position, and the category becomes learnable. (Under ``"key"``
the block only has to bring the key's colour to the object: even a near-uniform attention, a
global average, carries it, as the key is the only coloured thing in the image.)

Annotations (COCO format)
-------------------------
``segmentation`` is a polygon for squares and triangles and an RLE for discs, alternating
between compressed (``counts`` a string) and uncompressed (``counts`` a list) by annotation id,
so every encoding appears. The rendered object is painted exactly where its mask is 1 (the mask
of a polygon is the one pycocotools rasterises); ``bbox`` (``[x, y, w, h]``, pixel ``i`` covering
``[i, i + 1)``) is tight around the mask and ``area`` is its pixel count. Each object has 4
keypoints, :data:`KEYPOINT_NAMES` (``left_top, right_top, left_bottom, right_bottom``), all
visible (``v = 2``): the shape's extreme points in the four diagonal directions (argmax of
``-x - y``, ``x - y``, ``-x + y`` and ``x + y`` over the geometric shape), clamped into the bbox.
For a square they are its corners, for a disc the points of its circle at 45 degrees, for an
upward triangle the apex (twice: ``left_top == right_top``) and the two base corners. A
horizontal flip swaps ``left_*`` and ``right_*`` (:data:`KEYPOINT_FLIP_INDEX`). Both categories
carry ``keypoints`` and a ``skeleton`` (the square's edges, 1-based), so the file serves instance
and keypoint evaluation alike (use :data:`KEYPOINT_OKS_SIGMAS` for COCOeval's
``kpt_oks_sigmas``). Each image record also holds ``key``: ``{"bbox", "center", "color",
"color_index", "shape"}``; each annotation ``shape``, ``color``, ``color_index`` and
``key_distance`` (nearest-pixel distance of the bounding squares).

Files
-----
:func:`generate_context_shapes` writes, under ``folder``: ``images/000001.png``...
(``file_name`` in the JSON is relative to ``images/``), ``annotations.json`` and
``manifest.json``, written last, which marks a complete cache. :func:`context_shapes_splits`
writes one such folder per split under ``root``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from nonlocalnet.atomic import atomic_write_bytes
from nonlocalnet.demo.synthetic import PALETTE
from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingDependencyError, MissingFileError

__all__ = [
    "CATEGORY_NAMES",
    "CLASS_NAMES",
    "FORMAT_VERSION",
    "KEYPOINT_FLIP_INDEX",
    "KEYPOINT_NAMES",
    "KEYPOINT_OKS_SIGMAS",
    "SHAPES",
    "SKELETON",
    "CocoSplit",
    "ContextShapesConfig",
    "context_shapes_splits",
    "generate_context_shapes",
    "key_position",
]

FORMAT_VERSION = 1
_FORMAT = "nonlocalnet-context-shapes"

CATEGORY_NAMES: tuple[str, ...] = ("match", "mismatch")
"""Category names by COCO category id - 1 (ids 1 and 2) of the ``"match"`` rule."""
RULES: tuple[str, ...] = ("match", "key")
"""What decides an object's category: whether its colour matches the key's, or the key's colour."""
NEUTRAL: tuple[int, int, int] = (200, 200, 200)
"""The objects' colour under the ``"key"`` rule (no key colour: the object itself says nothing)."""
CLASS_NAMES: tuple[str, ...] = ("__background__", *CATEGORY_NAMES)
"""Detector label -> name (label 0 is the background, labels 1 and 2 are the category ids)."""
SHAPES: tuple[str, ...] = ("square", "disc", "triangle")
KEYPOINT_NAMES: tuple[str, ...] = ("left_top", "right_top", "left_bottom", "right_bottom")
KEYPOINT_FLIP_INDEX: tuple[int, ...] = (1, 0, 3, 2)
"""``flipped[i] = keypoints[KEYPOINT_FLIP_INDEX[i]]`` after a horizontal flip."""
SKELETON: tuple[tuple[int, int], ...] = ((1, 2), (2, 4), (4, 3), (3, 1))
"""The square's edges as 1-based keypoint pairs (COCO's convention)."""
KEYPOINT_OKS_SIGMAS: tuple[float, ...] = (0.07,) * 4
"""Per-keypoint OKS sigmas for COCOeval (``params.kpt_oks_sigmas``; its default is the 17
person keypoints'): 0.07, about a hip's, so that a 2-pixel error on a 20-pixel object scores
an OKS of about 0.78."""

_MAX_ATTEMPTS = 500  # key placements tried per image before the config is declared infeasible
_CANDIDATES = 64  # random positions tried at once per object


def _is_int(value: Any) -> bool:
    """A Python int, not a bool (nor a numpy scalar, which the JSON manifest could not hold)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


@dataclass(frozen=True)
class ContextShapesConfig:
    """Parameters of the "context shapes" data (see the module docstring).

    ``image_size``: side of the square images; ``num_colors``: the first colours of the palette;
    ``min_objects``/``max_objects``: objects per image (inclusive); ``object_size``: inclusive
    range of the objects' side; ``key_size``: side of the plus-shaped key; ``min_key_distance``:
    fewest pixels from any object pixel to any key pixel; ``object_gap``: background pixels kept
    between objects; ``background``: grey level (0-255); ``noise_std``: pixel noise (0-255 units);
    ``rule``: what decides an object's category (:data:`RULES`): ``"match"``, whether its colour is
    the key's; ``"key"``, the key's colour alone (objects are drawn in :data:`NEUTRAL`).
    """

    image_size: int = 128
    num_colors: int = 2
    min_objects: int = 2
    max_objects: int = 4
    object_size: tuple[int, int] = (14, 26)
    key_size: int = 10
    min_key_distance: float = 56
    object_gap: int = 2
    background: int = 30
    noise_std: float = 8.0
    rule: str = "match"

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int, hi: int | None = None) -> None:
            value = getattr(self, name)
            if not _is_int(value) or value < lo or (hi is not None and value > hi):
                where = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise InvalidValueError(f"{name} must be an int {where}, got {value!r}")

        if self.rule not in RULES:
            raise InvalidValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        need_int("image_size", 32)
        need_int("num_colors", 2, len(PALETTE))
        need_int("min_objects", 1, 32)
        need_int("max_objects", self.min_objects, 32)
        need_int("key_size", 3, self.image_size // 4)
        need_int("object_gap", 0)
        need_int("background", 0, 255)
        size = self.object_size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or not all(_is_int(v) for v in size)
            or not 3 <= size[0] <= size[1] <= self.image_size // 2
        ):
            raise InvalidValueError(
                f"object_size must be a tuple (min, max) of ints with 3 <= min <= max <= image_size // 2 "
                f"= {self.image_size // 2}, got {size!r}"
            )
        for name in ("min_key_distance", "noise_std"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise InvalidValueError(f"{name} must be a finite number >= 0, got {value!r}")
        # from a key in a corner, the farthest object (in the opposite corner) is this far away
        reach = math.sqrt(2) * (self.image_size - self.key_size - size[1] + 1)
        if self.min_key_distance > reach:
            raise InvalidValueError(
                f"min_key_distance={self.min_key_distance} is more than the {reach:.1f} px an object of "
                f"{size[1]} px can be from a {self.key_size} px key in a {self.image_size} px image"
            )

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in PALETTE[: self.num_colors])

    @property
    def category_names(self) -> tuple[str, ...]:
        """Category names by COCO category id - 1: :data:`CATEGORY_NAMES` for ``"match"``,
        ``"<colour>_key"`` per key colour for ``"key"``."""
        if self.rule == "key":
            return tuple(f"{name}_key" for name in self.color_names)
        return CATEGORY_NAMES

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContextShapesConfig:
        kwargs = dict(data)
        if "object_size" in kwargs:
            kwargs["object_size"] = tuple(kwargs["object_size"])
        return cls(**kwargs)


@dataclass(frozen=True)
class CocoSplit:
    """One generated split on disk: the image folder, the COCO JSON and the number of images."""

    images: Path
    annotations: Path
    num_images: int


# ----------------------------------------------------------------------------- placement
def _box_distance(cand: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Distances between the nearest pixel centres of boxes ``cand`` ``(N, 4)`` and ``box``
    (``x0, y0, x1, y1``, ``x1``/``y1`` exclusive)."""
    x0, y0, x1, y1 = box
    dx = np.maximum(0, np.maximum(cand[:, 0] - (x1 - 1), x0 - (cand[:, 2] - 1)))
    dy = np.maximum(0, np.maximum(cand[:, 1] - (y1 - 1), y0 - (cand[:, 3] - 1)))
    return np.hypot(dx, dy)


def _separated(cand: np.ndarray, box: tuple[int, int, int, int], gap: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (
        (cand[:, 0] >= x1 + gap)
        | (x0 >= cand[:, 2] + gap)
        | (cand[:, 1] >= y1 + gap)
        | (y0 >= cand[:, 3] + gap)
    )


def _place(
    config: ContextShapesConfig, rng: np.random.Generator, n: int
) -> tuple[tuple[int, int, int, int], list[tuple[int, int, int, int]]]:
    """The key's box and ``n`` object boxes (bounding squares) satisfying the geometry."""
    s, k = config.image_size, config.key_size
    lo, hi = config.object_size
    for _ in range(_MAX_ATTEMPTS):
        kx, ky = (int(v) for v in rng.integers(0, s - k + 1, size=2))
        key = (kx, ky, kx + k, ky + k)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            size = int(rng.integers(lo, hi + 1))
            xy = rng.integers(0, s - size + 1, size=(_CANDIDATES, 2))
            cand = np.concatenate([xy, xy + size], axis=1)
            ok = _box_distance(cand, key) >= config.min_key_distance
            for other in boxes:
                ok &= _separated(cand, other, config.object_gap)
            if not ok.any():
                break
            boxes.append(tuple(int(v) for v in cand[int(np.argmax(ok))]))  # type: ignore[arg-type]
        else:
            return key, boxes
    raise InvalidValueError(
        f"could not place {n} objects {config.min_key_distance} px from the key in {_MAX_ATTEMPTS} tries; "
        f"lower min_key_distance, max_objects or object_size"
    )


# ----------------------------------------------------------------------------- rendering
def _coco_mask() -> Any:
    try:
        from pycocotools import mask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the detection demo's data needs pycocotools: pip install 'nonlocalnet[detection]'"
        ) from e
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _shape_geometry(
    shape: str, box: tuple[int, int, int, int]
) -> tuple[list[float] | None, list[tuple[float, float]]]:
    """A polygon (``None`` for a disc) and the 4 diagonal extreme points of the geometric shape."""
    x0, y0, x1, y1 = box
    if shape == "square":
        return [x0, y0, x1, y0, x1, y1, x0, y1], [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
    if shape == "triangle":
        cx = (x0 + x1) / 2
        return [cx, y0, x1, y1, x0, y1], [(cx, y0), (cx, y0), (x0, y1), (x1, y1)]
    cx, cy, d = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 / math.sqrt(2)
    return None, [(cx - d, cy - d), (cx + d, cy - d), (cx - d, cy + d), (cx + d, cy + d)]


def _disc_mask(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def _key_mask(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A plus sign filling ``box``; its arms' thickness has the parity of the side (centred)."""
    x0, y0, x1, y1 = box
    k = x1 - x0
    t = max(1, k // 3)
    t += (k - t) % 2
    a = (k - t) // 2
    mask = np.zeros((size, size), np.uint8)
    mask[y0 + a : y0 + a + t, x0:x1] = 1
    mask[y0:y1, x0 + a : x0 + a + t] = 1
    return mask


def _render_image(
    config: ContextShapesConfig, rng: np.random.Generator, image_id: int, first_ann_id: int
) -> tuple[np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """One image ``(S, S, 3)`` uint8, its image record (without ``file_name``) and annotations."""
    coco_mask = _coco_mask()
    s, k = config.image_size, config.num_colors
    colors = np.array([rgb for _, rgb in PALETTE[:k]], dtype=np.float32)
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    key_box, boxes = _place(config, rng, n)
    key_color = int(rng.integers(0, k))
    matches = n // 2 + (int(rng.integers(0, 2)) if n % 2 else 0)
    is_match = rng.permutation(np.array([True] * matches + [False] * (n - matches)))
    shapes = rng.integers(0, len(SHAPES), size=n)
    others = rng.integers(1, k, size=n)

    canvas = np.full((s, s, 3), float(config.background), dtype=np.float32)
    canvas[_key_mask(key_box, s).astype(bool)] = colors[key_color]
    annotations = []
    for j, box in enumerate(boxes):
        color = key_color if is_match[j] else int((key_color + others[j]) % k)
        if config.rule == "key":
            category, color = key_color + 1, -1
        else:
            category = 1 if is_match[j] else 2
        ids = (first_ann_id + j, image_id, category)
        annotations.append(
            _draw_object(canvas, config, coco_mask, SHAPES[int(shapes[j])], box, color, key_box, ids)
        )
    if config.noise_std > 0:
        canvas += rng.normal(0.0, config.noise_std, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, _image_record(config, image_id, key_box, key_color), annotations


def _object_mask(
    coco_mask: Any, shape: str, box: tuple[int, int, int, int], size: int, ann_id: int
) -> tuple[np.ndarray, Any, list[tuple[float, float]]]:
    """An object's mask ``(size, size)``, its COCO segmentation (polygon, or an RLE for a disc:
    compressed for odd ``ann_id``) and its 4 diagonal extreme points."""
    polygon, extremes = _shape_geometry(shape, box)
    if polygon is not None:
        with warnings.catch_warnings():  # pycocotools' numpy-2 "__array__ ... copy" warning
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco_mask.decode(coco_mask.frPyObjects([polygon], size, size))[..., 0]
        return mask, [[float(v) for v in polygon]], extremes
    mask = _disc_mask(box, size)
    if ann_id % 2:
        rle = coco_mask.encode(np.asfortranarray(mask))
        return mask, {"size": [size, size], "counts": rle["counts"].decode("ascii")}, extremes
    return mask, _uncompressed_rle(mask), extremes


def _draw_object(
    canvas: np.ndarray,
    config: ContextShapesConfig,
    coco_mask: Any,
    shape: str,
    box: tuple[int, int, int, int],
    color: int,
    key_box: tuple[int, int, int, int],
    ids: tuple[int, int, int],
) -> dict[str, Any]:
    """Paint one object on ``canvas`` in palette colour ``color`` (-1: :data:`NEUTRAL`) and return
    its annotation; ``ids`` are its annotation, image and category ids."""
    ann_id, image_id, category = ids
    mask, segmentation, extremes = _object_mask(coco_mask, shape, box, config.image_size, ann_id)
    canvas[mask.astype(bool)] = np.array(NEUTRAL, np.float32) if color < 0 else PALETTE[color][1]
    ys, xs = np.nonzero(mask)
    bx, by, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    keypoints: list[float] = []
    for x, y in extremes:
        keypoints += [round(min(max(x, bx), bx1), 3), round(min(max(y, by), by1), 3), 2]
    distance = float(_box_distance(np.array([box]), key_box)[0])
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": int(mask.sum()),
        "bbox": [bx, by, bx1 - bx, by1 - by],
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": len(KEYPOINT_NAMES),
        "shape": shape,
        "color": "neutral" if color < 0 else config.color_names[color],
        "color_index": color,
        "key_distance": round(distance, 3),
    }


def _image_record(
    config: ContextShapesConfig, image_id: int, key_box: tuple[int, int, int, int], key_color: int
) -> dict[str, Any]:
    """An image's COCO record (without ``file_name``), with its ``key`` marker."""
    kx0, ky0, kx1, ky1 = key_box
    return {
        "id": image_id,
        "width": config.image_size,
        "height": config.image_size,
        "key": {
            "bbox": [kx0, ky0, kx1 - kx0, ky1 - ky0],
            "center": [(kx0 + kx1) / 2, (ky0 + ky1) / 2],
            "color": config.color_names[key_color],
            "color_index": key_color,
            "shape": "plus",
        },
    }


def _categories(config: ContextShapesConfig) -> list[dict[str, Any]]:
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": "shape",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in SKELETON],
        }
        for i, name in enumerate(config.category_names)
    ]


# ----------------------------------------------------------------------------- writing
def _split_code(split: str) -> int:
    return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")


def _file_name(i: int) -> str:
    return f"{i + 1:06d}.png"


def _save_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image, mode="RGB").save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """Our manifest, ``None`` when there is none; a foreign or unreadable one is an error (the
    folder is someone else's)."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidValueError(
            f"{path} is not a readable manifest; remove it or choose another folder"
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise InvalidValueError(
            f"{path} is not a {_FORMAT} manifest; this folder holds other data, choose another folder"
        )
    return manifest


def _split(folder: Path, num_images: int) -> CocoSplit:
    return CocoSplit(folder / "images", folder / "annotations.json", num_images)


def generate_context_shapes(
    folder: str | os.PathLike[str],
    *,
    num_images: int,
    seed: int,
    config: ContextShapesConfig | None = None,
    split: str = "train",
    on_mismatch: Literal["regenerate", "error"] = "regenerate",
    progress: bool = False,
) -> CocoSplit:
    """Write ``num_images`` images of the task and their COCO JSON under ``folder``, or reuse them.

    Image ``i`` is a deterministic function of ``(config, seed, split, i)`` (its own generator:
    the same arguments give identical PNG and JSON bytes; splits of one seed are independent).
    The cache is ``folder/manifest.json``, written last: if it holds the same arguments and its
    files exist, nothing is written. If it holds others, ``on_mismatch="regenerate"`` (default)
    deletes the old images and generates anew; ``"error"`` raises and leaves the folder as it is.
    An interrupted generation has no manifest and is redone.
    """
    config = ContextShapesConfig() if config is None else config
    if not isinstance(config, ContextShapesConfig):
        raise InvalidTypeError(f"config must be a ContextShapesConfig, got {type(config).__name__}")
    if not _is_int(num_images) or num_images < 1:
        raise InvalidValueError(f"num_images must be an int >= 1, got {num_images!r}")
    if not _is_int(seed) or seed < 0:
        raise InvalidValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(split, str) or not split:
        raise InvalidValueError(f"split must be a non-empty string, got {split!r}")
    if on_mismatch not in ("regenerate", "error"):
        raise InvalidValueError(f"on_mismatch must be 'regenerate' or 'error', got {on_mismatch!r}")
    folder = Path(folder)
    wanted = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_json(),
        "seed": seed,
        "split": split,
        "num_images": num_images,
    }
    if _reuse_cache(folder, wanted, on_mismatch):
        return _split(folder, num_images)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    code = _split_code(split)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in tqdm(range(num_images), desc=f"context shapes ({split})", unit="image", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, i]))
        image, record, anns = _render_image(config, rng, i + 1, len(annotations) + 1)
        _save_png(folder / "images" / _file_name(i), image)
        images.append({**record, "file_name": _file_name(i)})
        annotations += anns
    _write_annotations(folder, config, split, seed, images, annotations)
    manifest = {**wanted, "files": [_file_name(i) for i in range(num_images)]}
    atomic_write_bytes(folder / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return _split(folder, num_images)


def _write_annotations(
    folder: Path,
    config: ContextShapesConfig,
    split: str,
    seed: int,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> None:
    """Write the split's COCO JSON, ``folder/annotations.json``."""
    dataset = {
        "info": {
            "description": "nonlocalnet context shapes: does the object match the key's colour?",
            "version": FORMAT_VERSION,
            "split": split,
            "seed": seed,
            "config": config.to_json(),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(config),
    }
    atomic_write_bytes(
        folder / "annotations.json", (json.dumps(dataset, separators=(",", ":")) + "\n").encode()
    )


def _reuse_cache(folder: Path, wanted: dict[str, Any], on_mismatch: str) -> bool:
    """Whether ``folder`` holds the complete split that ``wanted`` (the manifest's arguments)
    describes; if not, its manifest, images and annotations are removed or, with
    ``on_mismatch="error"`` and other arguments, an error raised."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    same = all(manifest.get(key) == value for key, value in wanted.items())
    files = [folder / "annotations.json", *(folder / "images" / f for f in manifest.get("files", []))]
    if same and all(f.is_file() for f in files):
        return True
    if not same and on_mismatch == "error":
        theirs = {key: manifest.get(key) for key in wanted}
        raise InvalidValueError(
            f"{folder} holds context shapes generated with other arguments ({theirs}); pass "
            f"on_mismatch='regenerate' or another folder"
        )
    (folder / "manifest.json").unlink()  # from here on the folder is not a complete cache
    shutil.rmtree(folder / "images", ignore_errors=True)
    (folder / "annotations.json").unlink(missing_ok=True)
    return False


def context_shapes_splits(
    root: str | os.PathLike[str],
    *,
    train: int,
    val: int,
    tuning: int = 0,
    seed: int = 0,
    config: ContextShapesConfig | None = None,
    on_mismatch: Literal["regenerate", "error"] = "regenerate",
    progress: bool = False,
) -> dict[str, CocoSplit]:
    """The demo's splits under ``root/{split}``: ``"train"``, ``"val"`` (held out) and, when
    ``tuning > 0``, ``"tuning"`` (for choosing the recipe), each from its own random stream."""
    counts = {"train": train, "val": val, "tuning": tuning}
    if not _is_int(tuning) or tuning < 0:
        raise InvalidValueError(f"tuning must be an int >= 0, got {tuning!r}")
    root = Path(root)
    return {
        split: generate_context_shapes(
            root / split,
            num_images=n,
            seed=seed,
            config=config,
            split=split,
            on_mismatch=on_mismatch,
            progress=progress,
        )
        for split, n in counts.items()
        if split != "tuning" or n > 0
    }


def key_position(
    annotations_json: str | os.PathLike[str] | Mapping[str, Any], image_id: int
) -> tuple[float, float]:
    """Centre ``(x, y)``, in pixels, of the key marker of image ``image_id``; ``annotations_json``
    is the COCO JSON's path or its loaded content."""
    if isinstance(annotations_json, Mapping):
        dataset = annotations_json
    else:
        path = Path(annotations_json)
        if not path.is_file():
            raise MissingFileError(f"no annotations file {path}")
        dataset = json.loads(path.read_text(encoding="utf-8"))
    for image in dataset.get("images", []):
        if image.get("id") == image_id:
            if "key" not in image:
                raise InvalidValueError(f"image {image_id} has no key record (not context-shapes data?)")
            x, y = image["key"]["center"]
            return float(x), float(y)
    raise InvalidValueError(f"no image with id {image_id} in the annotations")
