"""Which frames make a clip: random clips for training, evenly spaced clips for testing.
And the seeds every random choice of the data pipeline derives from (:func:`mix_seeds`).

A clip of ``clip_length`` frames at ``stride`` covers a window of ``clip_length * stride``
consecutive frames and takes every ``stride``-th one (the paper: 64 consecutive frames with every
other one dropped = 32 frames at stride 2; the 8x8 models: 8 frames at stride 8). A video shorter
than the window is looped: indices wrap around modulo ``num_frames``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from nonlocalnet.errors import InvalidValueError

__all__ = ["ClipSampling", "mix_seeds", "test_clip_indices", "train_clip_indices", "window_frames"]


@dataclass(frozen=True)
class ClipSampling:
    """Clips of ``clip_length`` frames every ``stride`` frames; ``num_clips`` evenly spaced clips
    per video at test time (each with ``TransformConfig.num_crops`` crops)."""

    clip_length: int = 32
    stride: int = 2
    num_clips: int = 10

    def __post_init__(self) -> None:
        for name in ("clip_length", "stride", "num_clips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"ClipSampling.{name} must be a positive integer, got {value!r}")


def mix_seeds(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _check(num_frames: int, clip_length: int, stride: int) -> None:
    for name, value in (("num_frames", num_frames), ("clip_length", clip_length), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")


def _clip(start: int, num_frames: int, clip_length: int, stride: int) -> list[int]:
    return [(start + k * stride) % num_frames for k in range(clip_length)]


def train_clip_indices(
    num_frames: int, clip_length: int, stride: int, *, generator: torch.Generator
) -> list[int]:
    """One random clip: ``start + k * stride (mod num_frames)`` for ``k < clip_length``.

    ``start`` is uniform over ``[0, max(num_frames - clip_length * stride, 0)]``, so the window
    lies inside the video whenever the video is long enough.
    """
    _check(num_frames, clip_length, stride)
    last_start = max(num_frames - clip_length * stride, 0)
    start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
    return _clip(start, num_frames, clip_length, stride)


def test_clip_indices(num_frames: int, clip_length: int, stride: int, num_clips: int) -> list[list[int]]:
    """``num_clips`` clips evenly spaced in time (the paper tests with 10).

    With ``D = max(num_frames - clip_length * stride, 0)`` the last possible start, clip ``k``
    starts at ``k * D / (num_clips - 1)`` rounded half up: the first clip starts at frame 0 and the last
    one ends at the video's end. ``num_clips = 1`` gives the centre clip, start ``D / 2``
    rounded half up.
    A video shorter than one window has ``D = 0``: every clip is the same looped clip.
    """
    _check(num_frames, clip_length, stride)
    if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
        raise InvalidValueError(f"num_clips must be a positive integer, got {num_clips!r}")
    last_start = max(num_frames - clip_length * stride, 0)
    if num_clips == 1:
        starts = [(last_start + 1) // 2]
    else:  # k * D / (K - 1) rounded half up, in integers
        starts = [(2 * k * last_start + num_clips - 1) // (2 * (num_clips - 1)) for k in range(num_clips)]
    return [_clip(s, num_frames, clip_length, stride) for s in starts]


test_clip_indices.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def window_frames(
    start: float,
    end: float,
    *,
    num_frames: int,
    pts: np.ndarray | None = None,
    time_base: float | Fraction | None = None,
    fps: float = 0.0,
) -> range:
    """The frames of a video shown in ``[start, end)`` seconds after its first frame (a Kinetics
    clip's ``[time_start, time_end]`` inside its whole YouTube video, as ``ffmpeg -ss start -t
    (end - start)`` cuts it): found by the frames' timestamps (``pts``, frame ``i``'s in row
    ``i``, in ``time_base`` seconds) when known, else by ``fps``. May be empty."""
    eps = 1e-6  # a frame stamped at exactly ``start`` (in float seconds) belongs to the window
    if pts is not None and len(pts) and time_base:
        seconds = (np.asarray(pts, dtype=np.int64) - int(pts[0])) * float(time_base)
        first, stop = (int(i) for i in np.searchsorted(seconds, [start - eps, end - eps]))
    elif fps > 0:
        first, stop = math.ceil(start * fps - eps), math.ceil(end * fps - eps)
    else:
        raise InvalidValueError("window_frames needs the frames' timestamps or a frame rate")
    return range(min(first, num_frames), min(stop, num_frames))
