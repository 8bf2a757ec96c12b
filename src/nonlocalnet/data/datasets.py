"""Video lists, the clip dataset, bad-sample bookkeeping and the deterministic loader.

Determinism: an item's clip and augmentation depend only on ``(seed, epoch, index)``, and a
loader's order only on ``(seed, epoch)``, so results are the same whatever the number of workers,
ranks or the point a run resumed from. A video that cannot be read is never replaced by another:
it comes back as a :class:`BadSample`, travels in :attr:`ClipBatch.bad` and is counted by
:class:`BadDataLog`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from nonlocalnet.data.decode import VideoDecodeError, VideoInfo, VideoReader
from nonlocalnet.data.sampling import test_clip_indices, train_clip_indices
from nonlocalnet.data.transforms import TransformConfig, test_views, train_transform

__all__ = [
    "VIDEO_EXTENSIONS",
    "BadDataLog",
    "BadSample",
    "ClipBatch",
    "ClipSampling",
    "DataQualityError",
    "EpochSampler",
    "VideoClipDataset",
    "VideoSample",
    "build_loader",
    "class_folder_names",
    "collate_clips",
    "read_class_names",
    "read_video_list",
    "scan_class_folders",
]

logger = logging.getLogger("nonlocalnet.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


# -- samples and list files ---------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSample:
    """One labelled video file."""

    path: str
    label: int


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (surrounding spaces stripped, blank lines ignored); the line order
    gives the label index. A repeated name is an error."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ValueError(
                f"{path}:{lineno}: duplicate class name {name!r} (first on line {first_line[name]})"
            )
        first_line[name] = lineno
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def _parse_label(text: str, class_names: Sequence[str] | None, lookup: dict[str, int], where: str) -> int:
    text = text.strip()
    if class_names is not None and text in lookup:
        return lookup[text]
    try:
        label = int(text)
    except ValueError:
        if class_names is None:
            raise ValueError(
                f"{where}: label {text!r} is not an integer (pass class_names to use class-name labels)"
            ) from None
        raise ValueError(f"{where}: unknown class name {text!r} ({len(class_names)} classes)") from None
    if label < 0 or (class_names is not None and label >= len(class_names)):
        bound = f"[0, {len(class_names) - 1}]" if class_names is not None else ">= 0"
        raise ValueError(f"{where}: label {label} out of range (expected {bound})")
    return label


def read_video_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> list[VideoSample]:
    """Samples from a Kinetics/PySlowFast list file.

    Each non-blank line is ``path label`` (whitespace separated; the path may contain spaces, the
    label is the last field) or, when the first line contains a comma, CSV ``path,label`` with an
    optional header ``path,label`` (a header may name more columns; ``path`` and ``label`` are
    picked by name). A label is a class index, or a class name when ``class_names`` is given.
    Relative paths are resolved against ``root`` (default: the list file's folder). Errors name
    the file and line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    lookup = {name: i for i, name in enumerate(class_names)} if class_names is not None else {}
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        return []
    is_csv = "," in lines[0][1]
    rows = [
        (n, [f.strip() for f in (next(csv.reader([line])) if is_csv else line.strip().rsplit(maxsplit=1))])
        for n, line in lines
    ]
    header = [f.lower() for f in rows[0][1]]
    columns, has_header = (0, 1), "path" in header and "label" in header
    if has_header:
        columns = (header.index("path"), header.index("label"))
        rows = rows[1:]
    samples = []
    for lineno, fields in rows:
        where = f"{path}:{lineno}"
        if not has_header and len(fields) > 2:
            raise ValueError(f"{where}: {len(fields)} columns without a header line naming 'path,label'")
        if len(fields) <= max(columns) or not fields[columns[0]] or not fields[columns[1]]:
            expected = "'path,label'" if is_csv else "'path label'"
            raise ValueError(f"{where}: missing column (expected {expected}, got {fields!r})")
        label = _parse_label(fields[columns[1]], class_names, lookup, where)
        samples.append(VideoSample(str(base / fields[columns[0]]), label))
    return samples


def class_folder_names(root: str | os.PathLike) -> list[str]:
    """The class folders of a class-per-folder tree: the non-hidden sub-folders of ``root``,
    sorted by name (the order :func:`scan_class_folders` labels them in without a class list)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders")
    return classes


def scan_class_folders(
    root: str | os.PathLike,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    *,
    class_names: Sequence[str] | None = None,
) -> tuple[list[VideoSample], list[str]]:
    """A class-per-folder tree ``root/<class>/**/<video>``: every non-hidden sub-folder of ``root``
    is a class; videos are the files under it whose suffix is in ``extensions``
    (case-insensitive), sorted by path. Returns ``(samples, class_names)``.

    Labels: a folder's index in ``class_names`` when given (the training split's class list, so
    every split of a data set agrees; a folder not in it is an error, a listed class without a
    folder is fine), else its index among the tree's folders sorted by name.
    """
    root = Path(root)
    exts = tuple(e.lower() for e in extensions)
    classes = class_folder_names(root)
    if class_names is None:
        labels = {name: i for i, name in enumerate(classes)}
    else:
        labels = {name: i for i, name in enumerate(class_names)}
        if len(labels) != len(class_names):
            raise ValueError(f"class_names: repeated class names in {list(class_names)!r}")
        unknown = [name for name in classes if name not in labels]
        if unknown:
            raise ValueError(
                f"{root}: class folder(s) {', '.join(map(repr, unknown))} not in the class list "
                f"({len(labels)} classes: {_preview(list(labels))})"
            )
    samples = []
    for name in classes:
        label = labels[name]
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
        )
        samples += [VideoSample(str(p), label) for p in files]
    if not samples:
        raise ValueError(f"{root}: no videos with extensions {list(exts)} in {len(classes)} class folders")
    return samples, classes if class_names is None else list(class_names)


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


# -- the clip dataset ----------------------------------------------------------------------------


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
                raise ValueError(f"ClipSampling.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BadSample:
    """A video that could not be used: ``index`` in the dataset's sample list, its path and why.

    ``shape`` is the video tensor shape a good item would have had (lets a batch of only bad items
    keep its trailing shape); it does not take part in comparisons.
    """

    index: int
    path: str
    reason: str
    shape: tuple[int, ...] | None = field(default=None, compare=False)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class FrameCache:
    """Decoded videos kept in memory (uint8 ``(N, H, W, 3)`` by path), up to ``max_bytes``.

    For data sets that fit in RAM and are read for many epochs (small or synthetic ones): each
    video is then decoded once. Per process: with loader workers, each worker fills its own.
    Once full, other videos are read as usual (only the clip's frames, each time).
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, path: str) -> Tensor | None:
        return self._frames.get(path)

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def put(self, path: str, frames: Tensor) -> None:
        size = frames.numel() * frames.element_size()
        if self.bytes + size <= self.max_bytes:
            self._frames[path] = frames
            self.bytes += size


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
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
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
        return torch.Generator().manual_seed(_mix(self.seed, epoch, index))

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


# -- batches and bad samples ----------------------------------------------------------------------


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
            raise TypeError(
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


class DataQualityError(RuntimeError):
    """Too many bad samples."""


class BadDataLog:
    """The bad samples met so far, deduplicated by ``(index, path)``.

    :meth:`add` logs each new one once (logger ``"nonlocalnet.data"``, level WARNING);
    :meth:`merge` combines the logs of several ranks (without logging again).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], BadSample] = {}

    def add(self, bad: Iterable[BadSample]) -> int:
        """Record ``bad``; returns how many were new."""
        new = 0
        for b in bad:
            key = (b.index, b.path)
            if key not in self._entries:
                self._entries[key] = b
                new += 1
                logger.warning("bad video (sample %d) %s: %s", b.index, b.path, b.reason)
        return new

    def merge(self, other: BadDataLog | Iterable[BadSample | Mapping[str, Any]]) -> None:
        """Add another log's entries: a :class:`BadDataLog`, :class:`BadSample`\\ s, or the
        ``"bad"`` dicts of a :meth:`summary` (e.g. gathered from other ranks)."""
        items = other.entries if isinstance(other, BadDataLog) else other
        for b in items:
            if isinstance(b, Mapping):
                b = BadSample(int(b["index"]), str(b["path"]), str(b["reason"]))
            self._entries.setdefault((b.index, b.path), b)

    @property
    def entries(self) -> list[BadSample]:
        return list(self._entries.values())

    @property
    def count(self) -> int:
        return len(self._entries)

    def fraction(self, seen: int) -> float:
        """``count / seen`` (0 when nothing was seen and nothing is bad, else 1 if ``seen`` is 0)."""
        if seen <= 0:
            return 0.0 if self.count == 0 else 1.0
        return self.count / seen

    def check(self, seen: int, threshold: float = 0.01) -> None:
        """Raise :class:`DataQualityError` when more than ``threshold`` of the ``seen`` samples are
        bad."""
        frac = self.fraction(seen)
        if frac > threshold:
            first = "; ".join(f"{b.path} ({b.reason})" for b in self.entries[:5])
            more = f"; and {self.count - 5} more" if self.count > 5 else ""
            raise DataQualityError(
                f"{self.count} bad videos out of {seen} samples seen ({frac:.2%}) exceed the threshold "
                f"{threshold:.2%}: {first}{more}"
            )

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"count": n, "bad": [{"index", "path", "reason"}, ...]}``."""
        return {
            "count": self.count,
            "bad": [{"index": b.index, "path": b.path, "reason": b.reason} for b in self.entries],
        }


# -- sampler and loader --------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Deterministic order: a permutation of ``num_items`` from ``(seed, epoch)`` (identity when
    ``shuffle=False``), of which rank ``r`` of ``world`` takes ``perm[r::world]``.

    So the union of the ranks' ``k``-th batches of size ``b`` is the ``k``-th batch of size
    ``world * b`` of a single process. Uneven lengths: with ``drop_last`` the permutation is cut
    to a multiple of ``world``; otherwise it is padded by repeating its first items
    (:attr:`num_padded` of them), so every rank yields as many items; evaluation drops the repeats
    by their ``(index, clip)``. ``start_batch`` skips the first batches of ``batch_size`` items on
    the next pass only (resuming mid-epoch). With ``epoch_keys`` it yields ``(index, epoch)``.
    """

    def __init__(
        self,
        num_items: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        batch_size: int = 1,
        start_batch: int = 0,
        epoch: int = 0,
        epoch_keys: bool = False,
    ) -> None:
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.batch_size, self.start_batch, self.epoch = batch_size, start_batch, epoch
        self.epoch_keys = epoch_keys

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (changes the permutation and the items' randomness)."""
        self.epoch = int(epoch)

    @property
    def num_padded(self) -> int:
        """How many repeated items the ranks' shares hold in total (0 with ``drop_last``)."""
        if self.drop_last or self.num_items == 0:
            return 0
        return math.ceil(self.num_items / self.world) * self.world - self.num_items

    def _order(self) -> list[int]:
        n = self.num_items
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: n - n % self.world]
        elif order:
            pad = self.num_padded
            order += (order * (pad // n + 1))[:pad]
        return order

    def indices(self) -> list[int]:
        """This rank's items for the next pass (after skipping ``start_batch`` batches)."""
        return self._order()[self.rank :: self.world][self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices, epoch = self.indices(), self.epoch
        self.start_batch = 0  # only the first pass resumes mid-epoch
        if self.epoch_keys:
            return iter([(i, epoch) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        return len(self.indices())


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    distributed: tuple[int, int] | None = None,
    drop_last: bool,
    pin_memory: bool | None = None,
    start_batch: int = 0,
    epoch: int = 0,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` (``distributed=(rank, world)``)
    and :func:`collate_clips`.

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``:
    a dataset with ``epoch_keys`` (:class:`VideoClipDataset`) then receives the epoch with every
    index, which persistent workers need. ``start_batch`` skips that many batches of the first
    pass (resuming mid-epoch). Workers persist between epochs when ``num_workers > 0``;
    ``pin_memory`` defaults to whether CUDA is available.
    """
    rank, world = distributed if distributed is not None else (0, 1)
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world=world,
        drop_last=drop_last,
        batch_size=batch_size,
        start_batch=start_batch,
        epoch=epoch,
        epoch_keys=bool(getattr(dataset, "epoch_keys", False)),
    )
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        # the workers' base seed comes from here, not from the global generator
        generator=torch.Generator().manual_seed(_mix(seed, -1)),
    )
