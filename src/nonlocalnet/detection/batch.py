"""Detection samples and batches: images of varied sizes stay a list (torchvision's detectors
batch them themselves); unreadable images travel in :attr:`DetectionBatch.bad`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.errors import InvalidTypeError

__all__ = ["DetectionBatch", "DetectionSample", "collate_detection"]


@dataclass
class DetectionSample:
    """One image and its target, as torchvision's detectors take them.

    ``image`` float32 ``(3, H, W)`` in ``[0, 1]`` (RGB); ``target``: ``boxes`` float32 ``(n, 4)``
    xyxy, ``labels`` int64 ``(n,)`` (contiguous, 0 is background), ``area`` float32 ``(n,)``,
    ``iscrowd`` int64 ``(n,)``, ``image_id`` int64 0-d, and when the data has them ``masks`` uint8
    ``(n, H, W)`` and ``keypoints`` float32 ``(n, K, 3)``. ``flipped``: whether the horizontal flip
    was applied.
    """

    index: int
    image_id: int
    path: str
    image: Tensor
    target: dict[str, Tensor]
    flipped: bool = False


def _map_target(target: dict[str, Tensor], fn) -> dict[str, Tensor]:
    return {k: fn(v) if isinstance(v, Tensor) else v for k, v in target.items()}


@dataclass
class DetectionBatch:
    """A collated detection batch: the good samples' fields as lists, the bad ones listed."""

    images: list[Tensor]
    targets: list[dict[str, Tensor]]
    indices: list[int]
    image_ids: list[int]
    paths: list[str]
    bad: list[BadSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> DetectionBatch:
        """A copy in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        return replace(
            self,
            images=[pin(im) for im in self.images],
            targets=[_map_target(t, pin) for t in self.targets],
            bad=list(self.bad),
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> DetectionBatch:
        """A copy with the images and targets on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            images=[move(im) for im in self.images],
            targets=[_map_target(t, move) for t in self.targets],
            bad=list(self.bad),
        )


def collate_detection(items: Sequence[DetectionSample | BadSample]) -> DetectionBatch:
    """List the good samples' images, targets, indices, image ids and paths, and the bad ones."""
    good: list[DetectionSample] = []
    bad: list[BadSample] = []
    for item in items:
        if isinstance(item, BadSample):
            bad.append(item)
        elif isinstance(item, DetectionSample):
            good.append(item)
        else:
            raise InvalidTypeError(
                f"collate_detection expects DetectionSample or BadSample items, got {type(item).__name__}"
            )
    return DetectionBatch(
        images=[s.image for s in good],
        targets=[s.target for s in good],
        indices=[s.index for s in good],
        image_ids=[s.image_id for s in good],
        paths=[s.path for s in good],
        bad=bad,
    )
