"""Video decoding with PyAV: header probing and seeking reads of just the frames a clip needs.

Frame ``i`` of a video is the ``i``-th frame the decoder outputs in presentation order (what
:func:`read_all_frames` returns at row ``i``). :func:`read_frames` finds it without decoding from
the start: the index of a decoded frame is ``round((pts - start_time) * time_base * rate)``, exact
for the constant-rate streams that datasets hold. When timestamps are missing, or are not regular
(a variable frame rate, frames the decoder dropped), it falls back to decoding from the start and
counting, so the two functions always agree. A frame that cannot be produced is an error, never
replaced by another frame.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

__all__ = ["VideoDecodeError", "VideoInfo", "probe_video", "read_all_frames", "read_frames"]

# How far before the first needed frame to seek again when a seek lands after it (the container
# seeks by decode timestamps, or has no exact index); after these, decode from the start.
_SEEK_RETRIES = (8, 64)


@dataclass(frozen=True)
class VideoInfo:
    """What the container and stream headers say about a video's first video stream.

    ``num_frames`` comes from the header's frame count; when the header has none, from
    duration x fps, or from counting packets (see :func:`probe_video`).
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


class VideoDecodeError(RuntimeError):
    """A video cannot be opened or decoded, or a requested frame does not exist."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


class _Fallback(Exception):
    """Timestamps cannot locate frames: decode from the start and count instead."""


def _av():
    import av

    return av


def _errors() -> tuple[type[BaseException], ...]:
    return (_av().FFmpegError, OSError, ValueError, IndexError, UnicodeDecodeError)


class _Reader:
    """One open container: probing and reading share it (``with _Reader(path) as r: ...``)."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 1) -> None:
        self.path = os.fspath(path)
        self.threads = threads
        if not os.path.exists(self.path):
            raise VideoDecodeError(self.path, "file not found")
        if not os.path.isfile(self.path):
            raise VideoDecodeError(self.path, "not a regular file")
        if os.path.getsize(self.path) == 0:
            raise VideoDecodeError(self.path, "empty file (0 bytes)")
        self.container = None
        self._reformatter = None
        self._open()
        self._info: VideoInfo | None = None

    def _open(self) -> None:
        self.close()
        try:
            self.container = _av().open(self.path, metadata_errors="ignore")
        except _errors() as e:
            raise VideoDecodeError(self.path, f"cannot open container ({e})") from e
        if not self.container.streams.video:
            self.close()
            raise VideoDecodeError(self.path, "no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = self.threads
        self._fresh = True  # positioned at the start, nothing decoded yet
        tb, rate = self.stream.time_base, self._rate()
        start = self.stream.start_time
        self._step = None if not tb or not rate or start is None else Fraction(tb) * Fraction(rate)
        self._start = start

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def _rate(self) -> Fraction | None:
        s = self.stream
        for rate in (s.average_rate, s.guessed_rate, s.base_rate):
            if rate:
                return Fraction(rate)
        return None

    # -- probing -------------------------------------------------------------------------------

    def info(self, *, exact: bool = False) -> VideoInfo:
        if self._info is not None:
            return self._info
        s, cc = self.stream, self.stream.codec_context
        rate = self._rate()
        fps = float(rate) if rate else 0.0
        n = s.frames or 0
        if n <= 0 and not exact and fps > 0:
            if s.duration and s.time_base:
                seconds = float(s.duration * s.time_base)
            elif self.container.duration:
                seconds = self.container.duration / 1_000_000  # AV_TIME_BASE
            else:
                seconds = 0.0
            n = round(seconds * fps)
        if n <= 0:
            n = self._count_packets()
        if n <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frames")
        if cc.width <= 0 or cc.height <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frame size in its header")
        self._info = VideoInfo(self.path, int(n), fps, cc.width, cc.height, cc.name)
        return self._info

    def _count_packets(self) -> int:
        """Frame count from demuxing (no decoding), in a separate container."""
        try:
            with _av().open(self.path, metadata_errors="ignore") as c:
                return sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        except _errors() as e:
            raise VideoDecodeError(self.path, f"cannot read packets ({e})") from e

    # -- reading -------------------------------------------------------------------------------

    def _frames(self) -> Iterator:
        try:
            for frame in self.container.decode(self.stream):
                self._fresh = False
                yield frame
        except _av().error.EOFError:
            return  # the data ends early (truncated file): the caller reports the missing frames
        except _errors() as e:
            raise VideoDecodeError(self.path, f"decoding failed ({e})") from e

    def _index(self, pts: int | None) -> int:
        if pts is None or self._step is None:
            raise _Fallback
        return round((pts - self._start) * self._step)

    def _seek(self, index: int) -> None:
        if index <= 0 and self._fresh:
            return
        if index <= 0:
            self._open()  # the most reliable way back to the first frame
            return
        target = self._start + int(index / self._step)
        self._fresh = False
        try:
            self.container.seek(target, backward=True, any_frame=False, stream=self.stream)
        except _errors() as e:
            raise VideoDecodeError(self.path, f"seek to frame {index} failed ({e})") from e

    def _rgb(self, frame, size: tuple[int, int]) -> np.ndarray:
        try:
            # one reformatter per file: it keeps its swscale context (to_ndarray builds one per frame)
            if self._reformatter is None:
                from av.video.reformatter import VideoReformatter

                self._reformatter = VideoReformatter()
            rgb = self._reformatter.reformat(frame, format="rgb24", width=size[1], height=size[0])
            return rgb.to_ndarray()
        except _errors() as e:
            raise VideoDecodeError(
                self.path, f"cannot convert a {frame.format.name} frame to RGB ({e})"
            ) from e

    def _read_run(self, run: list[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
        """Frames ``run`` (sorted, unique): seek to the keyframe at or before ``run[0]``, decode forward."""
        first, last, wanted = run[0], run[-1], set(run)
        for back in (0, *_SEEK_RETRIES, None):
            start = 0 if back is None else max(first - back, 0)
            self._seek(start)
            got: dict[int, np.ndarray] = {}
            prev = None
            for frame in self._frames():
                idx = self._index(frame.pts)
                if idx < 0 or (prev is None and start == 0 and idx != 0):
                    raise _Fallback  # timestamps before start_time, or the first frame is not at it
                if prev is None and idx > first:
                    break  # landed after the first needed frame
                if prev is not None and idx != prev + 1:
                    raise _Fallback  # irregular timestamps
                prev = idx
                if idx in wanted:
                    got[idx] = self._rgb(frame, size)
                if idx >= last:
                    break
            if prev is None and start > 0:
                continue  # overshot (or nothing after the seek point): seek further back
            if prev is None:
                raise VideoDecodeError(self.path, "no frame could be decoded")
            missing = sorted(wanted - got.keys())
            if missing:
                raise VideoDecodeError(
                    self.path,
                    f"frame {missing[0]} could not be decoded (the stream ends at frame {prev}; "
                    "beyond the end, or a truncated file?)",
                )
            return got
        raise AssertionError("unreachable")

    def _read_sequential(self, wanted: set[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
        """Decode from the start, counting frames, until the last wanted one."""
        self._open()
        last, got, count = max(wanted), {}, 0
        for count, frame in enumerate(self._frames(), 1):
            if count - 1 in wanted:
                got[count - 1] = self._rgb(frame, size)
            if count - 1 >= last:
                break
        missing = sorted(wanted - got.keys())
        if missing:
            raise VideoDecodeError(
                self.path,
                f"frame {missing[0]} could not be decoded (the stream has {count} frames; "
                "beyond the end, or a truncated file?)",
            )
        return got

    def read(self, indices: Sequence[int], *, max_gap: int = 32) -> Tensor:
        size = (self.info().height, self.info().width)
        idx = _check_indices(indices)
        if not idx:
            return torch.empty((0, *size, 3), dtype=torch.uint8)
        needed = sorted(set(idx))
        runs = [[needed[0]]]
        for i in needed[1:]:
            if i - runs[-1][-1] > max_gap:
                runs.append([i])
            else:
                runs[-1].append(i)
        try:
            got: dict[int, np.ndarray] = {}
            for run in runs:
                got.update(self._read_run(run, size))
        except _Fallback:
            got = self._read_sequential(set(needed), size)
        return torch.from_numpy(np.stack([got[i] for i in idx]))


def _check_indices(indices: Sequence[int]) -> list[int]:
    out = []
    for i in indices:
        try:
            if isinstance(i, bool):
                raise TypeError
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"frame indices must be integers, got {type(i).__name__} ({i!r})") from None
        if i < 0:
            raise ValueError(f"frame indices must be >= 0, got {i}")
        out.append(i)
    return out


def probe_video(path: str | os.PathLike, *, exact: bool = False) -> VideoInfo:
    """Read a video's headers (nothing is decoded).

    ``num_frames`` is the stream header's frame count; when it has none (Matroska/WebM, MPEG-TS),
    ``round(duration * fps)``, or, if the duration is unknown too, the number of video packets
    (demuxed, not decoded). ``exact=True`` counts packets instead of estimating from the
    duration. Raises :class:`VideoDecodeError` for a missing, empty or unreadable file or one
    without a video stream.
    """
    with _Reader(path) as reader:
        return reader.info(exact=exact)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    info: VideoInfo | None = None,
    max_gap: int = 32,
    threads: int = 1,
) -> Tensor:
    """Frames ``indices`` of a video as uint8 RGB ``(len(indices), H, W, 3)``, in that order.

    Duplicates are allowed. Only what the clip needs is decoded: the sorted unique indices are
    split into runs (a new run where consecutive needed frames are more than ``max_gap`` apart);
    for each run the container seeks to the keyframe at or before its first frame and decodes
    forward to its last frame. ``info`` (from :func:`probe_video`) sets the output's frame size;
    frames of another size are rescaled to it. ``threads`` is the decoder's thread count (1 suits
    DataLoader workers). Raises :class:`VideoDecodeError` when the file cannot be read or a
    requested frame does not exist (beyond the end, truncated file).
    """
    with _Reader(path, threads=threads) as reader:
        if info is not None:
            reader._info = info
        return reader.read(indices, max_gap=max_gap)


def read_all_frames(path: str | os.PathLike, *, threads: int = 1) -> Tensor:
    """Every frame of a video, decoded from the start: uint8 RGB ``(N, H, W, 3)``.

    Decodes until the data ends: a file cut short gives fewer frames than its header's count
    (:func:`read_frames` reports the missing ones instead). ``threads`` is the decoder's thread
    count (0: FFmpeg chooses).
    """
    with _Reader(path, threads=threads) as reader:
        size = (reader.info().height, reader.info().width)
        frames = [reader._rgb(f, size) for f in reader._frames()]
    if not frames:
        raise VideoDecodeError(path, "no frame could be decoded")
    return torch.from_numpy(np.stack(frames))
