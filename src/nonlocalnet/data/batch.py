"""Collating dataset items into a :class:`ClipBatch`: the good items stacked, the bad listed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.errors import InvalidTypeError

__all__ = ["ClipBatch", "collate_clips"]


@dataclass
class ClipBatch:
    """A collated batch: the good items stacked, the bad ones listed.

    ``video`` ``(B, ...)`` (B may be 0), ``label``/``index``/``clip`` int64 ``(B,)``.
    """

    video: Tensor
    label: Tensor
    index: Tensor
    clip: Tensor
    bad: list[BadSample] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def pin_memory(self) -> ClipBatch:
        """A copy in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        return replace(
            self,
            video=self.video.pin_memory(),
            label=self.label.pin_memory(),
            index=self.index.pin_memory(),
            clip=self.clip.pin_memory(),
            bad=list(self.bad),
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> ClipBatch:
        """A copy with the tensors on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            video=move(self.video),
            label=move(self.label),
            index=move(self.index),
            clip=move(self.clip),
            bad=list(self.bad),
        )


def collate_clips(items: Sequence[Mapping[str, Any] | BadSample]) -> ClipBatch:
    """Stack the good items of a :class:`VideoClipDataset` batch and list the bad ones.

    When every item is bad, ``video`` has 0 rows and the trailing shape the bad samples carry
    (:attr:`BadSample.shape`), or is an empty 1-D tensor when it is unknown.
    """
    good: list[Mapping[str, Any]] = []
    bad: list[BadSample] = []
    for item in items:
        if isinstance(item, BadSample):
            bad.append(item)
        elif isinstance(item, Mapping) and {"video", "label", "index", "clip"} <= item.keys():
            good.append(item)
        else:
            raise InvalidTypeError(
                "collate_clips expects dataset items {'video', 'label', 'index', 'clip'} or BadSample, "
                f"got {type(item).__name__}"
            )
    if good:
        video = torch.stack([it["video"] for it in good])
    else:
        shape = next((b.shape for b in bad if b.shape is not None), None)
        video = torch.empty((0, *shape)) if shape is not None else torch.empty(0)

    def ints(key: str) -> Tensor:
        return torch.tensor([int(it[key]) for it in good], dtype=torch.int64)

    return ClipBatch(video, ints("label"), ints("index"), ints("clip"), bad)
