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
from nonlocalnet.data.lists import VideoSample
from nonlocalnet.data.sampling import ClipSampling, mix_seeds, test_clip_indices, train_clip_indices
from nonlocalnet.data.transforms import TransformConfig, test_views, train_transform
from nonlocalnet.errors import InvalidValueError

__all__ = ["VideoClipDataset"]


class VideoClipDataset(Dataset):
    """Clips of labelled videos, transformed for training or testing.

    ``mode="train"``: item ``i`` is one random clip of video ``i`` with random augmentation,
    ``video`` of shape ``(3, T, crop, crop)``. ``mode="test"``: item ``i`` is clip
    ``i % num_clips`` (:func:`test_clip_indices`) of video ``i // num_clips`` with all its crops,
    ``video`` of shape ``(num_crops, 3, T, test_crop, test_crop)``.

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
            if cache is not None and (cache.get(sample.path) is not None or not cache.full):
                frames = self._cached(sample.path, gen, clip)
            else:
                frames = self._read(sample.path, video_index, gen, clip)
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

    def _cached(self, path: str, gen: torch.Generator | None, clip: int) -> Tensor:
        frames = self.frame_cache.get(path)
        if frames is None:
            with VideoReader(path, threads=self.threads) as reader:
                expected = reader.info(exact=True).num_frames
                frames = reader.read_all()
            if len(frames) < expected:
                raise VideoDecodeError(path, f"truncated: decoded {len(frames)} of {expected} frames")
            self.frame_cache.put(path, frames)
        return frames[self._indices(len(frames), gen, clip)]

    def _read(self, path: str, video_index: int, gen: torch.Generator | None, clip: int) -> Tensor:
        # the exact info (frame count and index) is built on first use and kept per process
        with VideoReader(path, threads=self.threads, info=self._infos.get(video_index)) as reader:
            info = reader.info(exact=True)
            try:
                return reader.read(self._indices(info.num_frames, gen, clip))
            finally:
                self._infos[video_index] = reader.info()  # a read may have learnt the index is unusable
