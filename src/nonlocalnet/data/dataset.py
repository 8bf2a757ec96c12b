"""The clip dataset: clips of labelled videos, decoded and transformed for training or testing.

Determinism: an item's clip and augmentation depend only on ``(seed, epoch, index)``, so results
are the same whatever the number of workers or ranks, or the point a run resumed from.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.data.decode import VideoDecodeError, VideoInfo, VideoReader
from nonlocalnet.data.frame_cache import FrameCache
from nonlocalnet.data.frame_folder import FrameFolderReader
from nonlocalnet.data.lists import VideoSample
from nonlocalnet.data.sampling import (
    ClipSampling,
    mix_seeds,
    test_clip_indices,
    train_clip_indices,
    window_frames,
)
from nonlocalnet.data.transforms import TransformConfig, test_views, train_transform
from nonlocalnet.errors import InvalidValueError

__all__ = ["VideoClipDataset", "sample_frames"]


class VideoClipDataset(Dataset):
    """Clips of labelled videos, transformed for training or testing.

    ``mode="train"``: item ``i`` is one random clip of video ``i`` with random augmentation,
    ``video`` of shape ``(3, T, crop, crop)``. ``mode="test"``: item ``i`` is clip
    ``i % num_clips`` (:func:`test_clip_indices`) of video ``i // num_clips`` with all its crops,
    ``video`` of shape ``(num_crops, 3, T, test_crop, test_crop)``.

    A sample with ``start``/``end`` is sampled within that window of its video only; one with
    ``num_frames`` is a folder of frame images (:class:`FrameFolderReader`). Video frames are read
    upright and with square pixels unless ``autorotate``/``square_pixels`` say otherwise
    (:func:`read_frames`).

    An item is ``{"video", "label", "index" (video index), "clip"}`` (train: ``clip`` is 0), or a
    :class:`BadSample` when the video is missing, empty, truncated or undecodable. Randomness comes
    from a generator seeded by ``(seed, epoch, i)``. The epoch is :meth:`set_epoch`'s, or given
    with the key: ``dataset[(i, epoch)]``, which :class:`EpochSampler` uses so that persistent
    workers see each epoch.
    """

    epoch_keys = True  # __getitem__ accepts (index, epoch) keys

    def __init__(
        self,
        samples: Sequence[VideoSample],
        *,
        mode: Literal["train", "test"],
        sampling: ClipSampling | None = None,
        transform: TransformConfig | None = None,
        seed: int = 0,
        threads: int = 1,
        frame_cache: FrameCache | None = None,
        autorotate: bool = True,
        square_pixels: bool = True,
    ) -> None:
        if mode not in ("train", "test"):
            raise InvalidValueError(f"mode must be 'train' or 'test', got {mode!r}")
        self.samples = [
            s if isinstance(s, VideoSample) else VideoSample(str(s[0]), int(s[1])) for s in samples
        ]
        self.mode = mode
        self.sampling = sampling if sampling is not None else ClipSampling()
        self.transform = transform if transform is not None else TransformConfig()
        self.seed = seed
        self.threads = threads
        self.frame_cache = frame_cache
        self.autorotate = autorotate  # video frames upright / with square pixels (read_frames)
        self.square_pixels = square_pixels
        self.epoch = 0
        self._infos: dict[int, VideoInfo] = {}  # per process (worker); headers never change

    def __len__(self) -> int:
        per_video = self.sampling.num_clips if self.mode == "test" else 1
        return len(self.samples) * per_video

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for integer keys."""
        self.epoch = int(epoch)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of an item's ``video``."""
        t, cfg = self.sampling.clip_length, self.transform
        if self.mode == "train":
            return (3, t, cfg.crop, cfg.crop)
        return (cfg.num_crops, 3, t, cfg.test_crop, cfg.test_crop)

    def generator(self, index: int, epoch: int) -> torch.Generator:
        """The generator of item ``index`` in ``epoch``."""
        return torch.Generator().manual_seed(mix_seeds(self.seed, epoch, index))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | BadSample:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for a dataset of {len(self)} items")
        s = self.sampling
        video_index, clip = (index // s.num_clips, index % s.num_clips) if self.mode == "test" else (index, 0)
        sample = self.samples[video_index]
        gen = self.generator(index, epoch) if self.mode == "train" else None
        try:
            cache = self.frame_cache
            if cache is not None and (cache.get(_cache_key(sample)) is not None or not cache.full):
                frames = self._cached(cache, sample, gen, clip)
            else:
                frames = self._read(sample, video_index, gen, clip)
        except VideoDecodeError as e:
            return BadSample(video_index, sample.path, e.reason, self.item_shape)
        if gen is not None:
            video = train_transform(frames, self.transform, generator=gen)
        else:
            video = test_views(frames, self.transform)
        return {"video": video, "label": sample.label, "index": video_index, "clip": clip}

    def _indices(self, num_frames: int, gen: torch.Generator | None, clip: int) -> list[int]:
        s = self.sampling
        if gen is not None:
            return train_clip_indices(num_frames, s.clip_length, s.stride, generator=gen)
        return test_clip_indices(num_frames, s.clip_length, s.stride, s.num_clips)[clip]

    def _open(self, sample: VideoSample, video_index: int | None) -> VideoReader | FrameFolderReader:
        if sample.num_frames is not None:
            return FrameFolderReader(sample.path, listed_frames=sample.num_frames)
        info = self._infos.get(video_index) if video_index is not None else None
        return VideoReader(
            sample.path,
            threads=self.threads,
            info=info,
            autorotate=self.autorotate,
            square_pixels=self.square_pixels,
        )

    def _cached(
        self, cache: FrameCache, sample: VideoSample, gen: torch.Generator | None, clip: int
    ) -> Tensor:
        key = _cache_key(sample)
        frames = cache.get(key)
        if frames is None:
            with self._open(sample, None) as reader:
                expected = reader.info(exact=True).num_frames
                frames = reader.read_all()
                if len(frames) < expected:
                    raise VideoDecodeError(
                        sample.path, f"truncated: decoded {len(frames)} of {expected} frames"
                    )
                window = sample_frames(sample, reader)
            frames = frames[window.start : window.stop]
            cache.put(key, frames)
        return frames[self._indices(len(frames), gen, clip)]

    def _read(self, sample: VideoSample, video_index: int, gen: torch.Generator | None, clip: int) -> Tensor:
        # the exact info (frame count and index) is built on first use and kept per process
        with self._open(sample, video_index) as reader:
            window = sample_frames(sample, reader)
            try:
                return reader.read([window[i] for i in self._indices(len(window), gen, clip)])
            finally:
                self._infos[video_index] = reader.info()  # a read may have learnt the index is unusable


def _cache_key(sample: VideoSample) -> str:
    """A sample's key in a :class:`FrameCache`: its path, with its time window if it has one."""
    return sample.path if sample.start is None else f"{sample.path}#t={sample.start},{sample.end}"


def sample_frames(sample: VideoSample, reader: VideoReader | FrameFolderReader) -> range:
    """The frames a sample may use: all of them, or those in its ``[start, end)`` window."""
    info = reader.info(exact=True)
    if sample.start is None or sample.end is None:
        frames = range(info.num_frames)
    else:
        # a video's frame timestamps where known; frame folders and unusable indexes go by fps
        pts = reader.index().pts if isinstance(reader, VideoReader) else None
        time_base = reader.stream.time_base if isinstance(reader, VideoReader) and pts is not None else None
        frames = window_frames(
            sample.start, sample.end, num_frames=info.num_frames, pts=pts, time_base=time_base, fps=info.fps
        )
    if not frames:
        raise VideoDecodeError(
            sample.path,
            f"no frame in the window [{sample.start}, {sample.end}) s of its {info.num_frames} frames",
        )
    return frames
