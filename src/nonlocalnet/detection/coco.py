"""COCO-format detection data (boxes, instance masks, keypoints) for torchvision's Mask R-CNN
and Keypoint R-CNN.

Determinism: an item's flip depends only on ``(seed, epoch, index)``, whatever the number of
workers or ranks. An image that cannot be read comes back as a :class:`BadSample` (never
replaced by another); a broken annotation file fails at construction (:func:`load_coco_json`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import re
from collections import Counter
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.data.sampling import mix_seeds
from nonlocalnet.detection.annotations import DroppedAnnotation, load_coco_json, segmentation_to_rle
from nonlocalnet.detection.batch import DetectionSample
from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = ["CocoDetection", "flip_indices", "load_image"]

_log = logging.getLogger(__name__)
_NO_MASK = "no mask (segmentation missing or []) while masks are read: a mask head needs one per instance"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# a name's words: separators (_ - . space and others) and camelCase boundaries split them
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SIDES = {"left": "right", "l": "r"}
_SIDES |= {b: a for a, b in _SIDES.items()}


def _swap_side(word: str) -> str:
    other = _SIDES[word.lower()]
    if word.isupper():
        return other.upper()
    return other.capitalize() if word[0].isupper() else other


def _side_counterparts(name: str) -> tuple[bool, set[str]]:
    """Whether ``name`` has a side word (``left``/``right``/``l``/``r``, any case, as a whole word:
    ``left_eye``, ``eye_Left``, ``LeftEye``, ``l_eye``, ``eye_R``, ``eyeL``, ``LHip``), and the
    names it has on the other side (also ``left``/``right`` inside a word: ``lefteye``)."""
    out = set()
    sided = False
    for m in _WORDS.finditer(name):
        if m.group().lower() in _SIDES:
            sided = True
            out.add(name[: m.start()] + _swap_side(m.group()) + name[m.end() :])
    for m in re.finditer("left|right", name, flags=re.IGNORECASE):
        out.add(name[: m.start()] + _swap_side(m.group()) + name[m.end() :])
    return sided, out


def flip_indices(names: Sequence[str], flip_map: Sequence[Sequence[str]] | None = None) -> list[int]:
    """Where each keypoint goes under a horizontal flip (``flipped[:, i] = kps[:, out[i]]``).

    ``flip_map``: pairs of names that swap (detectron2's ``keypoint_flip_map``); the names it does
    not list stay. Without it the pairs come from the names: a name with a side word (``left``,
    ``right``, ``l``, ``r`` in any case, before, after or inside the name: ``left_eye``,
    ``Left Eye``, ``eye_left``, ``eyeLeft``, ``l_eye``, ``eye_L``, ``eyeL``, ``LEye``) swaps with
    the name that has the other side word in its place and the same case. A sided name without
    exactly one such partner (``left_only``, ``l_eye`` with ``r-eye``) is an error asking for the
    map, since a keypoint flipped without its partner trains the wrong side.
    """
    names = list(names)
    position = {name: i for i, name in enumerate(names)}
    if len(position) != len(names):
        raise InvalidValueError(f"keypoint names must differ, got {names}")
    out = list(range(len(names)))
    if flip_map is not None:
        seen: set[str] = set()
        for pair in flip_map:
            if not (
                isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(n, str) for n in pair)
            ):
                raise InvalidValueError(f"keypoint_flip_map: expected pairs of keypoint names, got {pair!r}")
            a, b = pair
            unknown = [n for n in pair if n not in position]
            if unknown:
                raise InvalidValueError(
                    f"keypoint_flip_map names {unknown}, not keypoints of the data (its keypoints: {names})"
                )
            if a == b or a in seen or b in seen:
                raise InvalidValueError(
                    f"keypoint_flip_map: {[a, b]}: a pair is two different names, each in one pair only"
                )
            seen |= {a, b}
            out[position[a]], out[position[b]] = position[b], position[a]
        return out
    unpaired = []
    for i, name in enumerate(names):
        sided, others = _side_counterparts(name)
        found = sorted(o for o in others if o in position)
        if len(found) == 1 and name in _side_counterparts(found[0])[1]:
            out[i] = position[found[0]]
        elif sided or found:
            unpaired.append(name if not found else f"{name} (partners {found})")
    if unpaired:
        raise InvalidValueError(
            f"keypoint names {unpaired} look left/right but have no single partner by name; give "
            "keypoint_flip_map (detection.keypoint_flip_map: pairs of names a horizontal flip swaps, "
            "e.g. [[l_eye, r_eye], [l_ear, r_ear]]; names not listed stay)"
        )
    return out


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale as PIL opens it


def _rgb(im: Image.Image) -> np.ndarray | str:
    """float32 ``(H, W, 3)`` in ``[0, 1]``: 8-bit modes converted to RGB (alpha dropped), 16-bit
    greyscale scaled by 65535 (``convert("RGB")`` would clip it to white); other modes refused."""
    if im.mode in _SIXTEEN_BIT:
        grey = np.asarray(im, dtype=np.float32)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            return f"unsupported image: mode {im.mode} with values outside 0..65535"
        return np.repeat(grey[..., None] / 65535.0, 3, axis=2)
    if im.mode == "F":
        return "unsupported image: 32-bit float pixels (mode F); convert it to 8 or 16 bits"
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or invalid)."""
    orientation = im.getexif().get(0x0112, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def load_image(
    path: str | PathLike, width: int | None = None, height: int | None = None, *, exif: bool | None = None
) -> Tensor | str:
    """The RGB image at ``path`` as float32 ``(3, H, W)`` in ``[0, 1]`` (grayscale, palette, RGBA
    and CMYK converted, alpha dropped; 16-bit greyscale scaled, not clipped), or the reason it
    cannot be used: missing, undecodable, truncated, of an unsupported mode, or (when ``width``
    and ``height`` are given) of another size.

    EXIF orientation (``PIL.ImageOps.exif_transpose``, as detectron2's ``read_image``):
    ``exif=True`` applies it (the image as viewers show it), ``False`` never does. ``None``
    (default) follows the annotation file's ``width``/``height``: COCO's sizes are those of the
    stored pixels (pycocotools and torchvision's reference never apply EXIF), so the stored
    pixels are used whenever their size matches, a square image included; the upright image
    only when its size matches and the stored one's does not (annotations drawn in a tool that
    shows images upright, e.g. labelme, exported with the upright size)."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: a truncated file fails here
            orientation = _exif_orientation(im)
            upright = im.size[::-1] if orientation >= 5 else im.size  # 5-8 turn by 90 degrees
            sized = width is not None and height is not None
            if exif is None:
                exif = sized and im.size != (width, height) and upright == (width, height)
            if sized and (upright if exif else im.size) != (width, height):
                w, h = upright if exif else im.size
                turned = f" ({upright[0]}x{upright[1]} upright by its EXIF orientation)" * (upright != (w, h))
                return f"decoded size {w}x{h}{turned} differs from the annotation file's {width}x{height}"
            rgb = _rgb(ImageOps.exif_transpose(im) if exif and orientation != 1 else im)
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for broken files
        return f"unreadable image ({type(e).__name__}: {e})"
    if isinstance(rgb, str):
        return rgb
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


class CocoDetection(Dataset):
    """The images of a COCO annotation file with their targets (:class:`DetectionSample`).

    ``labels``: ``"contiguous"`` (default), ``1..K`` in ascending category id, or
    ``"category_ids"``, the label is the category id (torchvision's COCO convention; see
    :mod:`nonlocalnet.detection.labels`); 0 is the background and :attr:`label_to_category` maps
    labels back (:meth:`set_labels` changes the space). ``masks`` (default: whether the file has
    segmentations) decodes polygons, uncompressed and compressed RLE; ``keypoints`` (default:
    whether the categories name keypoints) adds ``(n, K, 3)`` keypoints (annotations of categories
    without keypoints get zeros, which the loss ignores). Crowd regions are left out of the targets
    (training and evaluation alike, as torchvision's reference does) but stay in :attr:`coco`,
    where COCOeval ignores the detections matched to them. Boxes are clipped to the image and
    degenerate ones (``w <= 0`` or ``h <= 0``) dropped with their masks and keypoints.

    Unusable annotations (a segmentation pycocotools would misread, see
    :func:`~nonlocalnet.detection.annotations.load_coco_json`; with ``masks``, an instance
    without a segmentation) are left out of the targets and of :attr:`coco` (the evaluation's
    ground truth) and listed in :attr:`dropped_annotations`, with a warning.

    ``skip_empty`` (default: ``train``) drops the images without a usable annotation (non-crowd,
    a box of positive size) from the index; otherwise they yield empty targets of the right
    shapes. With it and ``keypoints``, ``min_keypoints_per_image`` (default 0: off; torchvision's
    reference trains with 10) also drops the images whose instances of keypoint categories have
    fewer visible keypoints in all. :attr:`skipped_images` says why each was left out.
    ``flip`` (default: ``train``): a horizontal flip with probability 1/2 decided by
    ``mix_seeds(seed, epoch, index)``; keypoints swap by ``keypoint_flip_map`` (pairs of names)
    or, without it, by their names (:func:`flip_indices`; :attr:`flip_indices` is ``None`` when
    keypoints are not flipped). Keys are ``index`` (epoch of :meth:`set_epoch`) or
    ``(index, epoch)`` (:class:`~nonlocalnet.data.EpochSampler` with ``epoch_keys``).
    """

    epoch_keys = True  # __getitem__ accepts (index, epoch) keys

    def __init__(
        self,
        images: str | PathLike,
        annotations: str | PathLike,
        *,
        train: bool,
        flip: bool | None = None,
        seed: int = 0,
        keypoints: bool | None = None,
        skip_empty: bool | None = None,
        masks: bool | None = None,
        labels: str = "contiguous",
        keypoint_flip_map: Sequence[Sequence[str]] | None = None,
        min_keypoints_per_image: int = 0,
    ) -> None:
        self.root = Path(images)
        if not self.root.is_dir():
            raise MissingFileError(f"no such image folder: {self.root}")
        self.annotation_file = Path(annotations)
        data, dropped = load_coco_json(self.annotation_file)
        segmented = any("segmentation" in a for a in data["annotations"])
        has_segm = segmented or any(d.field.startswith("segmentation") for d in dropped)
        self.masks = has_segm if masks is None else bool(masks)
        if self.masks and not has_segm:
            raise InvalidValueError(
                f"{self.annotation_file}: masks requested but no annotation has a segmentation (box-only)"
            )
        if self.masks:  # a mask head trains and is evaluated on a mask of every instance
            dropped += [
                DroppedAnnotation(str(self.annotation_file), a["id"], "segmentation", _NO_MASK)
                for a in data["annotations"]
                if "segmentation" not in a
            ]
            data["annotations"] = [a for a in data["annotations"] if "segmentation" in a]
        self.dropped_annotations: list[DroppedAnnotation] = sorted(dropped, key=lambda d: d.annotation_id)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.train, self.seed, self.epoch = train, seed, 0
        self.flip = train if flip is None else bool(flip)
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.set_labels(labels)
        self.keypoint_names = self._keypoint_names()
        self.keypoints = bool(self.keypoint_names) if keypoints is None else bool(keypoints)
        if self.keypoints and not self.keypoint_names:
            raise InvalidValueError(f"{self.annotation_file}: keypoints requested but no category names any")
        self.flip_indices = self._flip_indices(keypoint_flip_map)
        if not (_is_int(min_keypoints_per_image) and min_keypoints_per_image >= 0):
            raise InvalidValueError(
                f"min_keypoints_per_image: expected an int >= 0, got {min_keypoints_per_image!r}"
            )
        skip = train if skip_empty is None else bool(skip_empty)
        self.min_keypoints_per_image = min_keypoints_per_image if skip and self.keypoints else 0
        ids = sorted(self.coco.imgs)
        self.skipped_images = {i: r for i in ids if (r := self._skip_reason(i))} if skip else {}
        self.image_ids = [i for i in ids if i not in self.skipped_images]
        self._log_report()

    def _flip_indices(self, flip_map: Sequence[Sequence[str]] | None) -> list[int] | None:
        """:func:`flip_indices` of the keypoints when they are flipped or a map is given (the
        guessed pairs logged); ``None`` when the keypoints are never flipped."""
        if not self.keypoints or (flip_map is None and not self.flip):
            return None
        try:
            out = flip_indices(self.keypoint_names, flip_map)
        except InvalidValueError as err:
            raise InvalidValueError(f"{self.annotation_file}: {err}") from None
        if flip_map is None:
            names = self.keypoint_names
            pairs = [f"{names[i]}<->{names[j]}" for i, j in enumerate(out) if i < j]
            stay = [names[i] for i, j in enumerate(out) if i == j]
            _log.info(
                "%s: keypoint flip pairs guessed from the names (keypoint_flip_map overrides): %s; stay: %s",
                self.annotation_file, ", ".join(pairs) or "none", ", ".join(stay) or "none",
            )  # fmt: skip
        return out

    def _skip_reason(self, image_id: int) -> str | None:
        """Why training leaves image ``image_id`` out, or ``None``: no usable annotation, or fewer
        visible keypoints than :attr:`min_keypoints_per_image` (torchvision's reference)."""
        if not self._usable(image_id):
            return "no usable annotation (non-crowd, a box of positive size)"
        if not self.min_keypoints_per_image:
            return None
        img = self.coco.imgs[image_id]
        anns = self._annotations(image_id)
        anns = [anns[i] for i in self._boxes(anns, img["width"], img["height"])[1].tolist()]
        with_kps = [a for a in anns if "keypoints" in a]
        if not with_kps:
            return None  # no instance of a keypoint category: as torchvision's reference, kept
        visible = sum(1 for a in with_kps for v in a["keypoints"][2::3] if v > 0)
        if visible < self.min_keypoints_per_image:
            return f"fewer than min_keypoints_per_image={self.min_keypoints_per_image} visible keypoints"
        return None

    def _log_report(self) -> None:
        """One warning for the dropped annotations; one line for the images training skips."""
        dropped = self.dropped_annotations
        if dropped:
            first = "; ".join(f"annotation {d.annotation_id} {d.field}: {d.reason}" for d in dropped[:5])
            more = f"; and {len(dropped) - 5} more" if len(dropped) > 5 else ""
            _log.warning(
                "%s: %d unusable annotations (or polygons of them) left out of training and evaluation: %s%s",
                self.annotation_file, len(dropped), first, more,
            )  # fmt: skip
        if self.skipped_images:
            counts = Counter(self.skipped_images.values())
            _log.info(
                "%s: %d of %d images left out of training: %s",
                self.annotation_file, len(self.skipped_images), len(self.coco.imgs),
                "; ".join(f"{n} with {reason}" for reason, n in counts.items()),
            )  # fmt: skip

    def data_report(self) -> dict[str, Any]:
        """JSON-serialisable: the annotation file, its dropped annotations (``annotation_id``,
        ``field``, ``reason``) and how many images training leaves out, by reason."""
        return {
            "annotations": str(self.annotation_file),
            "dropped_annotations": [
                {"annotation_id": d.annotation_id, "field": d.field, "reason": d.reason}
                | ({"instance_kept": True} if d.instance_kept else {})
                for d in self.dropped_annotations
            ],
            "skipped_images": dict(Counter(self.skipped_images.values())),
        }

    def set_labels(self, labels: str) -> None:
        """Use the label space ``labels``: ``"contiguous"`` or ``"category_ids"``."""
        if labels not in ("contiguous", "category_ids"):
            raise InvalidValueError(f"labels: {labels!r} is not 'contiguous' or 'category_ids'")
        if labels == "category_ids" and self.category_ids and self.category_ids[0] < 1:
            raise InvalidValueError(
                f"{self.annotation_file}: category {self.category_ids[0]} cannot be its own label (label 0 "
                "is the background); use labels='contiguous'"
            )
        ids = self.category_ids
        pairs = zip(ids, ids, strict=True) if labels == "category_ids" else enumerate(ids, start=1)
        self.label_to_category = dict(pairs)
        self.labels = labels
        self._label = {c: i for i, c in self.label_to_category.items()}

    def _keypoint_names(self) -> list[str]:
        cats = self.coco.cats
        named = [(c, cats[c]["keypoints"]) for c in self.category_ids if cats[c].get("keypoints")]
        for c, names in named[1:]:
            if names != named[0][1]:
                raise InvalidValueError(
                    f"{self.annotation_file}: categories {named[0][0]} and {c} name different keypoints; "
                    "one keypoint head predicts one set"
                )
        return list(named[0][1]) if named else []

    def _usable(self, image_id: int) -> bool:
        img = self.coco.imgs[image_id]
        return bool(len(self._boxes(self._annotations(image_id), img["width"], img["height"])[1]))

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        return [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]

    @staticmethod
    def _boxes(anns: list[dict[str, Any]], width: int, height: int) -> tuple[Tensor, Tensor]:
        """The clipped xyxy boxes of ``anns`` that have a positive size, and their positions."""
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero().flatten()
        return boxes[keep], keep

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for integer keys."""
        self.epoch = int(epoch)

    def aspect_groups(self) -> list[int]:
        """Per item: 0 for landscape (``w >= h``), 1 for portrait, from the annotation file."""
        return [0 if (im := self.coco.imgs[i])["width"] >= im["height"] else 1 for i in self.image_ids]

    def path(self, index: int) -> Path:
        return self.root / self.coco.imgs[self.image_ids[index]]["file_name"]

    def flipped(self, index: int, epoch: int) -> bool:
        """Whether item ``index`` is flipped in ``epoch``."""
        if not self.flip:
            return False
        gen = torch.Generator().manual_seed(mix_seeds(self.seed, epoch, index))
        return bool(torch.rand((), generator=gen) < 0.5)

    def __getitem__(self, key: int | tuple[int, int]) -> DetectionSample | BadSample:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for a dataset of {len(self)} images")
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.path(index)
        w, h = info["width"], info["height"]
        image = load_image(path, w, h)
        if isinstance(image, str):
            return BadSample(index, str(path), image)
        target = self.target(image_id)
        flip = self.flipped(index, epoch)
        if flip:
            image, target = image.flip(-1), self._flip(target, w)
        return DetectionSample(index, image_id, str(path), image, target, flip)

    def target(self, image_id: int) -> dict[str, Tensor]:
        """The unflipped target of image ``image_id`` (see :class:`DetectionSample`)."""
        info = self.coco.imgs[image_id]
        w, h = info["width"], info["height"]
        anns = self._annotations(image_id)
        boxes, keep = self._boxes(anns, w, h)
        anns = [anns[i] for i in keep.tolist()]
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
        }
        if self.masks:
            masks = torch.zeros((len(anns), h, w), dtype=torch.uint8)
            for i, a in enumerate(anns):  # one decode per instance: none can spill into another's mask
                masks[i] = torch.from_numpy(mask_utils.decode(segmentation_to_rle(a["segmentation"], h, w)))
            target["masks"] = masks
        if self.keypoints:
            k = len(self.keypoint_names)
            kps = torch.zeros((len(anns), k, 3), dtype=torch.float32)
            for i, a in enumerate(anns):
                if "keypoints" in a:
                    kps[i] = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(k, 3)
            kps[kps[..., 2] == 0] = 0  # invisible keypoints are (0, 0, 0)
            target["keypoints"] = kps
        return target

    def _flip(self, target: dict[str, Tensor], width: int) -> dict[str, Tensor]:
        out = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        out["boxes"] = boxes
        if "masks" in target:
            out["masks"] = target["masks"].flip(-1)
        if "keypoints" in target:
            kps = target["keypoints"][:, self.flip_indices].clone()
            kps[..., 0] = width - kps[..., 0]
            kps[kps[..., 2] == 0] = 0
            out["keypoints"] = kps
        return out
