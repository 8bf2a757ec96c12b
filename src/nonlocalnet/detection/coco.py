"""COCO-format detection data (boxes, instance masks, keypoints) for torchvision's Mask R-CNN
and Keypoint R-CNN.

Determinism: an item's flip depends only on ``(seed, epoch, index)``, whatever the number of
workers or ranks. An image that cannot be read comes back as a :class:`BadSample` (never
replaced by another); a broken annotation file fails at construction (:func:`load_coco_json`).
"""

from __future__ import annotations

import contextlib
import io
import operator
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.data.sampling import mix_seeds
from nonlocalnet.detection.annotations import load_coco_json, segmentation_to_rle
from nonlocalnet.detection.batch import DetectionSample
from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = ["CocoDetection", "flip_indices", "load_image"]


def flip_indices(names: list[str]) -> list[int]:
    """Where each keypoint goes under a horizontal flip: ``left*`` and ``right*`` names swap
    (``left_eye`` <-> ``right_eye``, any case), the others stay."""
    swaps = (("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT"))
    position = {name: i for i, name in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        other = name
        for a, b in swaps:
            if a in name:
                other = name.replace(a, b)
                break
            if b in name:
                other = name.replace(b, a)
                break
        out.append(position.get(other, i))
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


def load_image(path: str | PathLike, width: int | None = None, height: int | None = None) -> Tensor | str:
    """The RGB image at ``path`` as float32 ``(3, H, W)`` in ``[0, 1]`` (grayscale, palette, RGBA
    and CMYK converted, alpha dropped; 16-bit greyscale scaled, not clipped), or the reason it
    cannot be used: missing, undecodable, truncated, of an unsupported mode, or (when ``width``
    and ``height`` are given) of another size."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: a truncated file fails here
            if width is not None and height is not None and im.size != (width, height):
                return (
                    f"decoded size {im.size[0]}x{im.size[1]} differs from the annotation file's "
                    f"{width}x{height}"
                )
            rgb = _rgb(im)
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for broken files
        return f"unreadable image ({type(e).__name__}: {e})"
    if isinstance(rgb, str):
        return rgb
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


class CocoDetection(Dataset):
    """The images of a COCO annotation file with their targets (:class:`DetectionSample`).

    Labels are contiguous, ``1..K`` in ascending category id (0 is background):
    :attr:`label_to_category` maps them back. ``masks`` (default: whether the file has
    segmentations) decodes polygons, uncompressed and compressed RLE; ``keypoints`` (default:
    whether the categories name keypoints) adds ``(n, K, 3)`` keypoints (annotations of categories
    without keypoints get zeros, which the loss ignores). Crowd regions are left out of the targets
    (training and evaluation alike, as torchvision's reference does) but stay in :attr:`coco`,
    where COCOeval ignores the detections matched to them. Boxes are clipped to the image and
    degenerate ones (``w <= 0`` or ``h <= 0``) dropped with their masks and keypoints.

    ``skip_empty`` (default: ``train``) drops the images without a usable annotation (non-crowd,
    a box of positive size) from the index; otherwise they yield empty targets of the right
    shapes. ``flip`` (default: ``train``): a horizontal flip with probability 1/2 decided by
    ``mix_seeds(seed, epoch, index)``. Keys are ``index`` (epoch of :meth:`set_epoch`) or
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
    ) -> None:
        self.root = Path(images)
        if not self.root.is_dir():
            raise MissingFileError(f"no such image folder: {self.root}")
        self.annotation_file = Path(annotations)
        data = load_coco_json(self.annotation_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.train, self.seed, self.epoch = train, seed, 0
        self.flip = train if flip is None else bool(flip)
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_to_category = {i + 1: c for i, c in enumerate(self.category_ids)}
        self._label = {c: i for i, c in self.label_to_category.items()}
        self.keypoint_names = self._keypoint_names()
        self.keypoints = bool(self.keypoint_names) if keypoints is None else bool(keypoints)
        if self.keypoints and not self.keypoint_names:
            raise InvalidValueError(f"{self.annotation_file}: keypoints requested but no category names any")
        self.flip_indices = flip_indices(self.keypoint_names)
        has_segm = any("segmentation" in a for a in data["annotations"])
        self.masks = has_segm if masks is None else bool(masks)
        if self.masks and not has_segm:
            raise InvalidValueError(f"{self.annotation_file}: masks requested but it has no segmentations")
        skip = train if skip_empty is None else bool(skip_empty)
        ids = sorted(self.coco.imgs)
        self.image_ids = [i for i in ids if self._usable(i)] if skip else ids

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
            rles = [(i, segmentation_to_rle(a["segmentation"], h, w)) for i, a in enumerate(anns)]
            rles = [(i, rle) for i, rle in rles if rle is not None]
            if rles:  # one decode call for the image: (h, w, n)
                decoded = torch.from_numpy(mask_utils.decode([rle for _, rle in rles]))
                masks[[i for i, _ in rles]] = decoded.permute(2, 0, 1)
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
