"""Folders of frame images read like videos: the raw frames of mmaction2's raw-frame lists
(``dir n_frames label``), as its ``build_rawframes.py`` writes them (``img_00001.jpg``, ...,
optical flow ``x_*``/``y_*`` or ``flow_x_*``/``flow_y_*`` next to them)."""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nonlocalnet.data.decode import VideoDecodeError, VideoInfo
from nonlocalnet.errors import InvalidValueError

__all__ = ["IMAGE_EXTENSIONS", "FrameFolderReader", "frame_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frames of ``folder``, frame ``i`` first by name: the ``img_*`` images when there are any
    (mmaction2's RGB frames, beside its flow images), else every non-hidden image (extensions
    :data:`IMAGE_EXTENSIONS`, case-insensitive)."""
    images = sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    rgb = [p for p in images if p.name.startswith("img_")]
    return rgb or images


class FrameFolderReader:
    """A folder of frame images with :class:`~nonlocalnet.data.VideoReader`'s interface
    (``info``, ``read``, ``read_all``; a context manager). ``listed_frames``: the count the list
    gave (``info().header_frames``, so a difference shows as ``info().corrected``)."""

    def __init__(self, path: str | os.PathLike, *, listed_frames: int | None = None) -> None:
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            what = "not a folder" if os.path.exists(self.path) else "frame folder not found"
            raise VideoDecodeError(self.path, what)
        self.files = frame_files(self.path)
        if not self.files:
            raise VideoDecodeError(
                self.path, f"no frame images ({', '.join(IMAGE_EXTENSIONS)}) in the folder"
            )
        self.listed_frames = listed_frames
        self._info: VideoInfo | None = None

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def info(self, *, exact: bool = False) -> VideoInfo:
        """Frame count (the images in the folder: always exact) and the first frame's size."""
        if self._info is None:
            h, w = self._load(0).shape[:2]
            self._info = VideoInfo(
                self.path, len(self.files), 0.0, w, h, "images", exact=True, header_frames=self.listed_frames
            )
        return self._info

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            raise VideoDecodeError(
                self.path, f"frame {i} ({self.files[i].name}): cannot read image ({e})"
            ) from e
        if self._info is not None and rgb.shape[:2] != (self._info.height, self._info.width):
            raise VideoDecodeError(
                self.path,
                f"frame {i} ({self.files[i].name}) is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 "
                f"{self._info.width}x{self._info.height}",
            )
        return rgb

    def read(self, indices: list[int] | tuple[int, ...]) -> Tensor:
        """Frames ``indices`` as uint8 RGB ``(len(indices), H, W, 3)``, in that order."""
        info = self.info()
        idx = [operator.index(i) for i in indices]
        if any(i < 0 for i in idx):
            raise InvalidValueError(f"frame indices must be >= 0, got {min(idx)}")
        if not idx:
            return torch.empty((0, info.height, info.width, 3), dtype=torch.uint8)
        if max(idx) >= info.num_frames:
            raise VideoDecodeError(
                self.path, f"frame {max(idx)} does not exist (the folder has {info.num_frames} frames)"
            )
        loaded = {i: self._load(i) for i in sorted(set(idx))}
        return torch.from_numpy(np.stack([loaded[i] for i in idx]))

    def read_all(self) -> Tensor:
        """Every frame: uint8 RGB ``(N, H, W, 3)``."""
        return self.read(list(range(self.info().num_frames)))
