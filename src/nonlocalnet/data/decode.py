"""Video decoding with PyAV: header probing, a frame index, and seeking reads of just the frames a
clip needs.

**Frame ``i`` of a video is the ``i``-th frame its decoder outputs when it decodes the whole stream
from the start** (row ``i`` of :func:`read_all_frames`). :func:`read_frames` returns exactly that
frame, or raises :class:`VideoDecodeError`; it never returns another frame.

To find frame ``i`` without decoding everything before it, a :class:`FrameIndex` is built once per
video: the stream's packets are demuxed (not decoded), their presentation timestamps (pts) sorted,
and frame ``i`` is the frame whose pts has rank ``i``. Nothing is derived from a frame rate or a
start time, so variable frame rates, streams whose first pts is not the start time, B-frame
reordering, B-pyramids and open GOPs need no special case. Where this could still drift from the
sequential decode, it is checked:

- every packet must carry a pts, and no two the same (containers that only carry decode
  timestamps, duplicated frames); decode timestamps must not go backwards (a timestamp reset, as
  in transport streams joined end to end, makes the pts of the two parts interleave);
- the first frames are decoded once and their pts must be the index's first entries, in order.
  This catches decoders that drop frames at the start of the stream (leading pictures of an open
  GOP, a stream cut mid-GOP; those pts are removed from the index), pts that the decoder does not
  return as the container gave them, and containers whose "pts" are really decode order (H.264
  with B-frames in AVI);
- edit lists: packets the demuxer marks as discarded are left out, as the decoder leaves them out;
- every read checks the pts of every decoded frame: each must be in the index and follow its
  predecessor without a gap;
- a seek must land where it aimed: the first frame it outputs is the targeted keyframe or one
  before it, and every packet demuxed after it has the pts and size of a packet seen when the
  video was indexed (MPEG-PS and MPEG-TS seek by byte position and can resume mid-packet, stamping
  the next frames with a neighbour's pts); otherwise an earlier keyframe is tried, then the start;
- a frame the decoder flags as damaged is an error, as are the frames output after it up to the
  next keyframe: what a decoder conceals depends on where decoding started.

A video that fails a check is read by decoding from the start and counting (slow, but exact):
:attr:`FrameIndex.slow_reason` says why. Frame counts come from the same index (or, for such
videos, from decoding), so a clip sampler is never promised frames that do not exist;
:func:`probe_video` without ``exact=True`` only reads headers and says when its count is an
estimate.

**Display orientation.** Frames are returned as a player shows them. A display matrix (the
rotation a phone records in MP4/MOV, or a flip) is applied as ffmpeg's command line applies it
by default (``-autorotate``): the same transpose/flip for each matrix, read from the decoded frames
(FFmpeg 7 attaches the stream's matrix to every frame); a video whose frames change orientation is
an error. A non-square sample aspect ratio (SAR; anamorphic DVD, HDV, some camcorders) is resampled
to square pixels, enlarging one side (bilinear) as players do: width x SAR when SAR > 1, height / SAR
when SAR < 1, so no pixel is dropped. ffmpeg's command line, PySlowFast and mmaction2 keep the coded
pixels instead: ``square_pixels=False`` (``data.square_pixels: false``) does the same, and
``autorotate=False`` (``data.autorotate: false``, ffmpeg's ``-noautorotate``) ignores the matrix.
:class:`VideoInfo` reports the coded size, the SAR, the rotation and the display size.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from nonlocalnet.errors import InvalidTypeError, InvalidValueError, NonLocalNetError

if TYPE_CHECKING:  # PyAV is imported on first use
    from av.container import InputContainer
    from av.video.reformatter import VideoReformatter

__all__ = [
    "FrameIndex",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "probe_video",
    "read_all_frames",
    "read_frames",
]

# Frames decoded once when a video is indexed, to check the start of the stream against the index.
_VERIFY_FRAMES = 12
# Seeks tried per run of frames (the keyframe before the run, then earlier ones) before decoding
# from the start.
_SEEK_ATTEMPTS = 4
# The largest factor by which square_pixels enlarges a side (SAR 4:1 or 1:4); a larger SAR is a
# broken header, not a video to blow up in memory.
_MAX_SAR = 4


class VideoDecodeError(NonLocalNetError, RuntimeError):
    """A video cannot be opened or decoded, or a requested frame does not exist."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Where each frame of a video stream is (see the module docstring).

    ``pts`` (int64 ``(num_frames,)``, ascending) is frame ``i``'s presentation timestamp in the
    stream's time base; ``keyframes`` the frame indices of keyframes and ``seek_ts`` their decode
    timestamps (their pts where the container has none). When the timestamps cannot locate frames,
    ``pts`` is ``None``, ``slow_reason`` says why, and every read decodes from the start.
    ``dropped_at_start`` counts packets at the start of the stream that the decoder never outputs.
    ``packet_pts`` and ``packet_size`` (sorted by pts) list every packet the demuxer gave when the
    video was indexed, so that the packets demuxed after a seek can be checked against them.
    """

    num_frames: int
    pts: np.ndarray | None
    keyframes: np.ndarray
    seek_ts: np.ndarray
    slow_reason: str | None = None
    dropped_at_start: int = 0
    packet_pts: np.ndarray | None = None
    packet_size: np.ndarray | None = None

    @property
    def seekable(self) -> bool:
        return self.pts is not None

    def locate(self, pts: int | None) -> int | None:
        """The frame index of a decoded frame's ``pts``, ``None`` if it is not in the index."""
        if pts is None or self.pts is None:
            return None
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def known_packet(self, pts: int | None, size: int) -> bool:
        """Whether the video held a packet with this ``pts`` and ``size`` when it was indexed
        (true when the index keeps no packet table)."""
        if self.packet_pts is None or self.packet_size is None:
            return True
        if pts is None:
            return False
        lo, hi = np.searchsorted(self.packet_pts, [pts, pts + 1])
        return bool((self.packet_size[lo:hi] == size).any())

    def keyframe_before(self, frame: int) -> int:
        """Position in ``keyframes`` of the last keyframe at or before ``frame`` (-1: none)."""
        return int(np.searchsorted(self.keyframes, frame, side="right")) - 1

    @classmethod
    def counted(cls, num_frames: int, reason: str) -> FrameIndex:
        empty = np.empty(0, np.int64)
        return cls(num_frames, None, empty, empty, reason)


@dataclass(frozen=True)
class VideoInfo:
    """A video's first video stream: size, rate, codec and frame count.

    ``num_frames`` is exact when ``exact`` is true (counted from the :class:`FrameIndex`, kept in
    ``index``); otherwise it is the header's count or ``duration x fps``, an estimate that
    Matroska, WebM, MPEG-TS and variable-rate videos often get wrong. ``header_frames`` is what the
    header said (``None``: nothing), so ``corrected`` tells when the two differ.

    ``width`` and ``height`` are the coded frame size (ffprobe's). ``sample_aspect_ratio`` is the
    shape of a coded pixel (width / height; 1 when the file says nothing), ``rotation`` the
    clockwise degrees and ``flip`` the left-right mirroring (after the rotation) that the video's
    display matrix asks for, as ffmpeg's command line applies it (read from the first decoded frame;
    ``rotation`` is 0, 90, 180 or 270, anything else an odd angle that reads refuse to apply).
    ``display_width`` x ``display_height`` is what a player shows and what :func:`read_frames`
    returns by default (:meth:`frame_size` for other settings).
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    exact: bool = False
    header_frames: int | None = None
    sample_aspect_ratio: Fraction = Fraction(1)
    rotation: int = 0
    flip: bool = False
    index: FrameIndex | None = field(default=None, repr=False, compare=False)

    @property
    def rotated(self) -> bool:
        """The display matrix turns or mirrors the coded picture."""
        return self.rotation != 0 or self.flip

    @property
    def orientation(self) -> str:
        """The display matrix's transform in words: ``"turned 90 degrees clockwise, mirrored"``."""
        return _describe(self.rotation, self.flip)

    def frame_size(self, *, autorotate: bool = True, square_pixels: bool = True) -> tuple[int, int]:
        """``(height, width)`` of the frames read with these settings (see the module docstring):
        the coded size, with ``square_pixels`` resampled to square pixels, with ``autorotate``
        turned by the display matrix."""
        h, w = self.height, self.width
        sar = self.sample_aspect_ratio
        if square_pixels and sar > 1:
            w = math.floor(w * sar + Fraction(1, 2))
        elif square_pixels and sar < 1:
            h = math.floor(h / sar + Fraction(1, 2))
        return (w, h) if autorotate and self.rotation % 180 == 90 else (h, w)

    @property
    def display_width(self) -> int:
        """Width as a player shows the video (square pixels, turned upright)."""
        return self.frame_size()[1]

    @property
    def display_height(self) -> int:
        """Height as a player shows the video (square pixels, turned upright)."""
        return self.frame_size()[0]

    @property
    def corrected(self) -> bool:
        """The exact count differs from the header's estimate."""
        return self.exact and self.header_frames is not None and self.header_frames != self.num_frames

    @property
    def slow_reason(self) -> str | None:
        """Why this video's timestamps cannot be used for seeking (reads decode from the start)."""
        return self.index.slow_reason if self.index is not None else None


class _Untrusted(Exception):
    """Decoded frames contradict the index: count from the start instead."""


class _BadLanding(Exception):
    """A seek did not land on the keyframe it aimed at, or the packets demuxed after it are not
    the ones the video was indexed with (wrong timestamps after a seek: MPEG-PS, MPEG-TS)."""


def _av():
    import av

    return av


def _errors() -> tuple[type[BaseException], ...]:
    return (_av().FFmpegError, OSError, ValueError, IndexError, UnicodeDecodeError)


def _display_matrix(frame) -> bytes | None:
    """The frame's display matrix (FFmpeg's 9 native int32), ``None`` if it has none."""
    from av.sidedata.sidedata import Type

    sd = frame.side_data.get(Type.DISPLAYMATRIX)
    data = bytes(sd) if sd is not None else b""
    return data[:36] if len(data) >= 36 else None


def _c_round(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)  # C's round(): halves away from zero


def _orientation(matrix: bytes | None) -> tuple[int, bool]:
    """``(clockwise degrees, mirrored after turning)`` that ffmpeg's command line applies for a
    display matrix (``fftools``' ``get_rotation`` and its transpose/hflip/vflip choice); an angle
    that is not a multiple of 90 comes back as is (ffmpeg would rotate by it, filling corners)."""
    if matrix is None:
        return 0, False
    m = struct.unpack("=9i", matrix)
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:  # no angle (ffmpeg's NaN): only its vflip test applies
        return (180, True) if m[4] < 0 else (0, False)
    ccw = -math.degrees(math.atan2(m[1] / s1, m[0] / s0))  # av_display_rotation_get
    theta = -_c_round(ccw)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return 90, m[3] > 0  # transpose=cclock_flip (a transpose), else transpose=clock
    if abs(theta - 180) < 1:  # hflip if m[0] < 0, vflip if m[4] < 0
        return {(True, True): (180, False), (True, False): (0, True), (False, True): (180, True)}.get(
            (m[0] < 0, m[4] < 0), (0, False)
        )
    if abs(theta - 270) < 1:
        return 270, m[3] < 0  # transpose=clock_flip, else transpose=cclock
    if abs(theta) > 1:
        return int(theta), False
    return (180, True) if m[4] < 0 else (0, False)  # vflip


def _describe(rotation: int, flip: bool) -> str:
    if not rotation:
        return "mirrored" if flip else "not turned"
    return f"turned {rotation} degrees clockwise" + (", mirrored" if flip else "")


def _orient(rgb: np.ndarray, rotation: int, flip: bool) -> np.ndarray:
    """Turn an ``(H, W, 3)`` frame clockwise by ``rotation`` degrees, then mirror it left-right."""
    out = np.rot90(rgb, -(rotation // 90)) if rotation else rgb
    return out[:, ::-1] if flip else out


def _seek_targets(index: FrameIndex, first: int) -> list[tuple[int, int]]:
    """Where to seek to read from frame ``first``, in order: ``(timestamp, keyframe)``. A container
    seeks by pts (Matroska) or by dts (MP4, AVI, MPEG-TS): the keyframe's pts, then its dts, then
    earlier keyframes' (none for frame 0's keyframe, read from the start; none without timestamps)."""
    targets: list[tuple[int, int]] = []
    if index.pts is None:
        return targets
    for j in range(index.keyframe_before(first), -1, -1):
        if index.keyframes[j] == 0 or len(targets) >= _SEEK_ATTEMPTS:
            break
        key = int(index.keyframes[j])
        key_pts, key_dts = int(index.pts[key]), int(index.seek_ts[j])
        targets += [(key_pts, key)] if key_dts == key_pts else [(key_pts, key), (key_dts, key)]
    return targets


class VideoReader:
    """One open video: probing, indexing and reading share it.

    ``with VideoReader(path) as r: r.read([0, 5, 9])``. ``info`` (an exact :class:`VideoInfo` from
    an earlier reader or :func:`probe_video`) skips indexing again. ``threads`` is the decoder's
    thread count (1 suits DataLoader workers, 0 lets FFmpeg choose). ``autorotate`` applies the
    display matrix and ``square_pixels`` the sample aspect ratio to the frames read (module
    docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int = 1,
        info: VideoInfo | None = None,
        autorotate: bool = True,
        square_pixels: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.threads = threads
        for name, value in (("autorotate", autorotate), ("square_pixels", square_pixels)):
            if not isinstance(value, bool):
                raise InvalidTypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        self.autorotate = autorotate
        self.square_pixels = square_pixels
        if not os.path.exists(self.path):
            raise VideoDecodeError(self.path, "file not found")
        if not os.path.isfile(self.path):
            raise VideoDecodeError(self.path, "not a regular file")
        if os.path.getsize(self.path) == 0:
            raise VideoDecodeError(self.path, "empty file (0 bytes)")
        if info is not None and not isinstance(info, VideoInfo):
            raise InvalidTypeError(f"info must be a VideoInfo, got {type(info).__name__}")
        self.container: InputContainer | None = None
        self._reformatter: VideoReformatter | None = None
        self._packet_table: list[tuple[int, int]] | None = None
        self._check_packets: FrameIndex | None = None
        self._turn: tuple[int, bool] | None = None  # the orientation _rgb applies (None: as coded)
        self._first_turn: tuple[int, bool] | None = None  # the first frame's, once decoded
        self._open()
        self._info: VideoInfo | None = info

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

    def _input(self) -> InputContainer:
        if self.container is None:
            raise VideoDecodeError(self.path, "the reader is closed")
        return self.container

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    # -- probing -------------------------------------------------------------------------------

    def info(self, *, exact: bool = False) -> VideoInfo:
        """The stream's :class:`VideoInfo`; ``exact=True`` indexes the video for a true count."""
        if self._info is None:
            self._info = self._header_info(exact)
        if exact and not self._info.exact:
            index = self._build_index()
            self._info = replace(self._info, num_frames=index.num_frames, exact=True, index=index)
        return self._info

    def index(self) -> FrameIndex:
        """The video's :class:`FrameIndex` (built on first use)."""
        info = self.info(exact=True)
        index = info.index
        if index is None:  # an exact info made without an index (by hand): index it now
            index = self._build_index()
            self._info = replace(info, num_frames=index.num_frames, index=index)
        return index

    def _header_info(self, exact: bool = False) -> VideoInfo:
        s, cc = self.stream, self.stream.codec_context
        rate = next((Fraction(r) for r in (s.average_rate, s.guessed_rate, s.base_rate) if r), None)
        fps = float(rate) if rate else 0.0
        estimate = s.frames or None
        container_duration = self._input().duration  # in AV_TIME_BASE units (microseconds)
        if estimate is None and fps > 0:
            if s.duration and s.time_base:
                estimate = round(float(s.duration * s.time_base) * fps) or None
            elif container_duration:
                estimate = round(container_duration / 1_000_000 * fps) or None
        if cc.width <= 0 or cc.height <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frame size in its header")
        sar = s.sample_aspect_ratio  # av_guess_sample_aspect_ratio: the container's, else the codec's
        sar = Fraction(sar) if sar is not None and sar > 0 else Fraction(1)
        info = VideoInfo(
            self.path,
            estimate or 0,
            fps,
            cc.width,
            cc.height,
            cc.name,
            header_frames=estimate,
            sample_aspect_ratio=sar,
        )
        if estimate is None or exact:  # nothing to estimate from, or asked: count
            index = self._build_index()  # (decodes the first frames: the orientation comes with them)
            info = replace(info, num_frames=index.num_frames, exact=True, index=index)
        rotation, flip = self._first_orientation()
        return replace(info, rotation=rotation, flip=flip)

    def _first_orientation(self) -> tuple[int, bool]:
        """The display orientation of the stream's first decoded frame (PyAV has no reader for the
        stream's display matrix; FFmpeg puts it on every frame). :meth:`_frames` notes it."""
        if self._first_turn is None:
            self._rewind()
            for _ in self._frames():
                break
        if self._first_turn is None:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        return self._first_turn

    def _packets(self) -> list[tuple[int | None, int | None, bool]]:
        """``(pts, dts, keyframe)`` of every video packet in decode order (demuxed, not decoded),
        without the empty ones (AVI's dropped frames) and those the demuxer marks as discarded (edit
        lists); ``(pts, size)`` of every non-empty packet, discarded ones included, is kept in
        ``self._packet_table``. Raises when the container's header lists more packets than the file
        holds."""
        try:
            with _av().open(self.path, metadata_errors="ignore") as c:
                s = c.streams.video[0]
                listed, total, out, table = s.frames, 0, [], []
                for p in c.demux(s):
                    if p.size or p.dts is not None or p.pts is not None:  # not the final flush packet
                        total += 1
                        if p.size and p.pts is not None:
                            table.append((p.pts, p.size))
                        if p.size and not p.is_discard:
                            out.append((p.pts, p.dts, p.is_keyframe))
                # the header lists more frames than there are packets, and its duration ends more
                # than two frames after the last one (AVI's "frame count" of a variable-rate video
                # is its duration in ticks: there the two agree)
                if listed and total < listed:
                    pts = sorted(p[0] for p in out if p[0] is not None)
                    end = (s.start_time or 0) + (s.duration or 0)
                    step = (pts[-1] - pts[0]) / (len(pts) - 1) if len(pts) > 1 else 0
                    if not s.duration or not pts or pts[-1] + 2 * step < end:
                        raise VideoDecodeError(
                            self.path, f"truncated: the header lists {listed} frames, the file holds {total}"
                        )
        except _errors() as e:
            raise VideoDecodeError(self.path, f"cannot read packets ({e})") from e
        self._packet_table = table
        return out

    def _build_index(self) -> FrameIndex:
        self._packet_table = None
        packets = self._packets()
        table = self._packet_table
        if not packets:
            raise VideoDecodeError(self.path, "the video stream has no frames")
        if any(p[0] is None for p in packets):
            return self._counted("its packets carry no presentation timestamps (decode order only)")
        dts = np.array([p[1] for p in packets if p[1] is not None], np.int64)
        if len(dts) > 1 and (np.diff(dts) < 0).any():
            # a timestamp reset (streams joined end to end, a recorder restarting its clock): the
            # pts of the two parts interleave, so the rank of a pts is not the frame's position
            return self._counted("its decode timestamps go backwards (a timestamp reset)")
        pts = np.array([p[0] for p in packets], np.int64)
        order = np.argsort(pts, kind="stable")
        sorted_pts = pts[order]
        if len(sorted_pts) > 1 and (np.diff(sorted_pts) == 0).any():
            return self._counted("two packets share a presentation timestamp")
        rank = np.empty(len(pts), np.int64)
        rank[order] = np.arange(len(pts))
        keys = [(rank[j], p[1] if p[1] is not None else p[0]) for j, p in enumerate(packets) if p[2]]
        keys.sort()
        keyframes = np.array([k for k, _ in keys], np.int64)
        seek_ts = np.array([t for _, t in keys], np.int64)
        index = FrameIndex(len(sorted_pts), sorted_pts, keyframes, seek_ts)
        if table:
            table.sort()
            packet_pts = np.array([t[0] for t in table], np.int64)
            if np.array_equal(packet_pts, sorted_pts):
                packet_pts = sorted_pts  # the same array: kept (and pickled) once
            index = replace(
                index, packet_pts=packet_pts, packet_size=np.array([t[1] for t in table], np.int32)
            )
        return self._verify_start(index)

    def _verify_start(self, index: FrameIndex) -> FrameIndex:
        """Decode the first frames; their pts must be the index's first ones, in order. Frames the
        decoder never outputs at the start are removed from the index."""
        self._rewind()
        want = min(index.num_frames, _VERIFY_FRAMES)
        seen: list[int] = []
        try:
            for frame in self._frames():
                i = index.locate(frame.pts)
                if i is None:
                    return self._counted(f"a decoded frame's timestamp ({frame.pts}) is not a packet's")
                if seen and i != seen[-1] + 1:
                    return self._counted(
                        f"decoded frames are not in timestamp order (frame {seen[-1]}, then {i}): "
                        "the container's timestamps do not give the presentation order"
                    )
                seen.append(i)
                if len(seen) >= want:
                    break
        except VideoDecodeError:
            if not seen:
                raise
            # damaged data after the first frames: the start is checked; reading the frames
            # past the damage reports it
        if not seen:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        drop = seen[0]
        if drop == 0 or index.pts is None:  # (frames were located: the index has timestamps)
            return index
        kept = index.keyframes >= drop
        return replace(
            index,
            num_frames=index.num_frames - drop,
            pts=index.pts[drop:],
            keyframes=index.keyframes[kept] - drop,
            seek_ts=index.seek_ts[kept],
            dropped_at_start=drop,
        )

    def _counted(self, reason: str) -> FrameIndex:
        """Count frames by decoding everything (no colour conversion)."""
        self._rewind()
        count = sum(1 for _ in self._frames())
        if count == 0:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        return FrameIndex.counted(count, reason)

    def _distrust(self, reason: str) -> None:
        index = self._counted(reason)
        self._info = replace(self.info(), num_frames=index.num_frames, exact=True, index=index)

    # -- reading -------------------------------------------------------------------------------

    def _frames(self) -> Iterator:
        check = self._check_packets  # an index whose packet table the demuxed packets must match
        # a stream cut before a keyframe (VP9, VP8) starts with packets its decoder rejects: read from
        # the start of the file, those before the first keyframe are skipped (as the H.264, HEVC and
        # MPEG-2 decoders drop such frames themselves)
        at_start = self._fresh
        try:
            for packet in self._input().demux(self.stream):
                if check is not None and packet.size and not check.known_packet(packet.pts, packet.size):
                    raise _BadLanding(f"a packet (pts {packet.pts}, {packet.size} bytes) is not in the index")
                at_start = at_start and not packet.is_keyframe
                try:
                    frames = packet.decode()
                except _av().error.InvalidDataError:
                    if at_start and packet.size:
                        continue
                    raise
                for frame in frames:
                    if self._fresh:  # the stream's first frame: its display orientation is the video's
                        self._first_turn = _orientation(_display_matrix(frame))
                    at_start = self._fresh = False
                    yield frame
        except _av().error.EOFError:
            return  # the data ends early (truncated file): the caller reports the missing frames
        except _errors() as e:
            raise VideoDecodeError(self.path, f"decoding failed ({e})") from e

    def _rewind(self) -> None:
        if not self._fresh:
            self._open()  # the most reliable way back to the first frame

    def _seek(self, ts: int, frame: int) -> None:
        self._fresh = False
        try:
            self._input().seek(int(ts), backward=True, any_frame=False, stream=self.stream)
        except _errors() as e:
            raise VideoDecodeError(self.path, f"seek to frame {frame} failed ({e})") from e

    def _rgb(self, frame, size: tuple[int, int]) -> np.ndarray:
        try:
            # one reformatter per file: it keeps its swscale context (to_ndarray builds one per frame)
            if self._reformatter is None:
                from av.video.reformatter import VideoReformatter

                self._reformatter = VideoReformatter()
            converted = self._reformatter.reformat(frame, format="rgb24", width=size[1], height=size[0])
            rgb = converted.to_ndarray()
        except _errors() as e:
            raise VideoDecodeError(
                self.path, f"cannot convert a {frame.format.name} frame to RGB ({e})"
            ) from e
        if self._turn is None:
            return rgb
        turn = _orientation(_display_matrix(frame))
        if turn != self._turn:
            raise VideoDecodeError(
                self.path,
                f"the frame at pts {frame.pts} has another display orientation ({_describe(*turn)}) "
                f"than the first frame ({_describe(*self._turn)}); pass autorotate=False "
                "(data.autorotate: false) to read the frames as coded",
            )
        return _orient(rgb, *turn)

    def _output_size(self, info: VideoInfo) -> tuple[int, int]:
        """The size frames are converted to (square pixels when asked, before turning them), after
        checking that the settings can be applied; sets the orientation :meth:`_rgb` applies."""
        self._turn = None
        if self.autorotate:
            if info.rotation % 90:
                raise VideoDecodeError(
                    self.path,
                    f"its display matrix turns the picture by {info.rotation} degrees; only multiples "
                    "of 90 are applied: pass autorotate=False (data.autorotate: false) to read the "
                    "frames as coded",
                )
            self._turn = (info.rotation, info.flip)
        size = info.frame_size(autorotate=False, square_pixels=self.square_pixels)
        if size[0] > _MAX_SAR * info.height or size[1] > _MAX_SAR * info.width:
            sar = info.sample_aspect_ratio
            raise VideoDecodeError(
                self.path,
                f"its sample aspect ratio {sar.numerator}:{sar.denominator} would stretch "
                f"{info.width}x{info.height} frames to {size[1]}x{size[0]} (more than {_MAX_SAR}x: a "
                "broken header?); pass square_pixels=False (data.square_pixels: false) to read the "
                "coded pixels",
            )
        return size

    def _read_run(self, index: FrameIndex, run: list[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
        """Frames ``run`` (sorted, unique): seek to the keyframe at or before ``run[0]``, decode
        forward; if the seek lands elsewhere, seek to an earlier keyframe, finally start over.

        A seek has landed where it aimed when the first frame it outputs is the targeted keyframe or
        one before it (a decodable leading picture), and every packet demuxed after it is one the
        video was indexed with (containers that seek by byte position, MPEG-PS and MPEG-TS, can
        resume mid-packet and give the next frames the wrong timestamps)."""
        first, last, wanted = run[0], run[-1], set(run)
        for target in (*_seek_targets(index, first), None):
            if target is None:
                self._rewind()
            else:
                self._seek(target[0], first)
            got: dict[int, np.ndarray] = {}
            prev = damaged = None
            self._check_packets = index if target is not None else None
            try:
                for frame in self._frames():
                    i = index.locate(frame.pts)
                    if i is None:
                        why = f"a decoded frame's timestamp ({frame.pts}) is not in the index"
                        raise _BadLanding(why) if target is not None else _Untrusted(why)
                    if prev is None and target is not None and i > target[1]:
                        raise _BadLanding(f"the seek to frame {target[1]} landed at frame {i}")
                    if prev is None and i > first:
                        raise _Untrusted(f"decoding from the start began at frame {i}")
                    if prev is not None and i != prev + 1:
                        raise _Untrusted(f"the decoder output frame {i} after frame {prev}")
                    prev = i
                    # (damaged leading pictures before the targeted keyframe do not count)
                    damaged = self._damaged(damaged, frame, i, counts=target is None or i >= target[1])
                    if i in wanted:
                        self._check_damage(damaged, i)
                        got[i] = self._rgb(frame, size)
                    if i >= last:
                        break
            except _BadLanding:
                continue  # try an earlier keyframe, finally the start
            except VideoDecodeError as e:
                self._decode_failed(e, wanted, got, prev)
            finally:
                self._check_packets = None
            if prev is None:
                if target is not None:
                    continue  # nothing usable after this seek point: try an earlier one
                raise VideoDecodeError(self.path, "no frame could be decoded")
            missing = sorted(wanted - got.keys())
            if missing:
                raise VideoDecodeError(
                    self.path,
                    f"frame {missing[0]} could not be decoded (the stream ends at frame {prev} of "
                    f"{index.num_frames}: a truncated or corrupt file?)",
                )
            return got
        raise AssertionError("unreachable")

    def _damaged(self, damaged: int | None, frame, i: int, *, counts: bool = True) -> int | None:
        """Track damage while decoding: ``damaged`` is the last frame the decoder flagged as damaged
        since the last keyframe it output (``None``: none); returns the new state. What a decoder
        conceals depends on where decoding started (a seeking read and a decode from the start
        differ), so frames from a damaged one up to the next keyframe are not read."""
        if frame.is_corrupt and counts:
            return i
        if frame.key_frame:
            return None
        return damaged

    def _check_damage(self, damaged: int | None, i: int) -> None:
        if damaged is None:
            return
        if damaged == i:
            raise VideoDecodeError(self.path, f"frame {i} is damaged (the decoder reported errors in it)")
        raise VideoDecodeError(
            self.path,
            f"frame {i} is decoded from damaged frame {damaged} (the decoder reported errors in it; "
            "no keyframe between them)",
        )

    def _decode_failed(self, e: VideoDecodeError, wanted, got, prev: int | None) -> None:
        """Re-raise a decoder error that names no frame with the first frame it cost."""
        missing = sorted(set(wanted) - got.keys())
        if not e.reason.startswith("decoding failed") or not missing:
            raise e
        where = f"after frame {prev}" if prev is not None else "before any frame"
        raise VideoDecodeError(
            self.path, f"frame {missing[0]} could not be decoded: {e.reason} {where}"
        ) from e

    def _read_sequential(self, wanted: set[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
        """Decode from the start, counting frames, until the last wanted one."""
        self._rewind()
        last, got, count, damaged = max(wanted), {}, 0, None
        try:
            for count, frame in enumerate(self._frames(), 1):
                damaged = self._damaged(damaged, frame, count - 1)
                if count - 1 in wanted:
                    self._check_damage(damaged, count - 1)
                    got[count - 1] = self._rgb(frame, size)
                if count - 1 >= last:
                    break
        except VideoDecodeError as e:
            self._decode_failed(e, wanted, got, count - 1 if count else None)
        missing = sorted(wanted - got.keys())
        if missing:
            raise VideoDecodeError(
                self.path,
                f"frame {missing[0]} could not be decoded (the stream has {count} frames; "
                "a truncated or corrupt file?)",
            )
        return got

    def read(self, indices: Sequence[int], *, max_gap: int = 32) -> Tensor:
        """Frames ``indices`` as uint8 RGB ``(len(indices), H, W, 3)``, in that order (see
        :func:`read_frames`)."""
        idx = _check_indices(indices)
        info = self.info(exact=True)  # (indexing decodes the first frame: no decode for the orientation)
        size = self._output_size(info)
        if not idx:
            out = info.frame_size(autorotate=self.autorotate, square_pixels=self.square_pixels)
            return torch.empty((0, *out, 3), dtype=torch.uint8)
        index = self.index()
        beyond = max(idx)
        if beyond >= index.num_frames:
            raise VideoDecodeError(
                self.path,
                f"frame {beyond} does not exist (the video has {index.num_frames} frames, 0 to "
                f"{index.num_frames - 1})",
            )
        needed = sorted(set(idx))
        got: dict[int, np.ndarray] = {}
        if index.seekable:
            runs = [[needed[0]]]
            for i in needed[1:]:
                if i - runs[-1][-1] > max_gap:
                    runs.append([i])
                else:
                    runs[-1].append(i)
            try:
                for run in runs:
                    got.update(self._read_run(index, run, size))
            except _Untrusted as e:
                self._distrust(str(e))  # remembered in info(): later reads count directly
                got = {}
        if not got:
            got = self._read_sequential(set(needed), size)
        return torch.from_numpy(np.stack([got[i] for i in idx]))

    def read_all(self) -> Tensor:
        """Every frame, decoded from the start: uint8 RGB ``(N, H, W, 3)``."""
        self._rewind()
        container, frames = self.container, self._frames()
        first = next(frames, None)  # gives the orientation, so that info() decodes nothing more
        size = self._output_size(self.info())
        if self.container is not container:  # info() had to index the video (re-opened it): again
            self._rewind()
            frames = self._frames()
            first = next(frames, None)
        if first is None:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        out = [self._rgb(f, size) for f in itertools.chain([first], frames)]
        return torch.from_numpy(np.stack(out))


def _check_indices(indices: Sequence[int]) -> list[int]:
    out = []
    for i in indices:
        try:
            if isinstance(i, bool):
                raise TypeError
            i = operator.index(i)
        except TypeError:
            raise InvalidTypeError(
                f"frame indices must be integers, got {type(i).__name__} ({i!r})"
            ) from None
        if i < 0:
            raise InvalidValueError(f"frame indices must be >= 0, got {i}")
        out.append(i)
    return out


def probe_video(path: str | os.PathLike, *, exact: bool = False) -> VideoInfo:
    """A video's :class:`VideoInfo`.

    By default only headers and the first frame (for its display matrix) are read: ``num_frames``
    is the stream header's frame count, else ``round(duration * fps)``, an estimate (``info.exact``
    is false) that Matroska, WebM, MPEG-TS and variable-rate videos often get wrong. The
    orientation, sample aspect ratio and display size are in the info. ``exact=True`` builds the
    video's :class:`FrameIndex` (demuxes every packet and decodes the first few frames; a video
    whose timestamps cannot be used is decoded whole) and counts exactly; pass that info to
    :func:`read_frames` to reuse the index. Raises :class:`VideoDecodeError` for a missing, empty
    or unreadable file or one without a video stream.
    """
    with VideoReader(path) as reader:
        return reader.info(exact=exact)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    info: VideoInfo | None = None,
    max_gap: int = 32,
    threads: int = 1,
    autorotate: bool = True,
    square_pixels: bool = True,
) -> Tensor:
    """Frames ``indices`` of a video as uint8 RGB ``(len(indices), H, W, 3)``, in that order.

    Frame ``i`` is the ``i``-th frame of a decode from the start, always (module docstring).
    Duplicates are allowed. Only what the clip needs is decoded: the sorted unique indices are
    split into runs (a new run where consecutive needed frames are more than ``max_gap`` apart);
    for each run the reader seeks to the keyframe at or before its first frame and decodes forward
    to its last. ``info`` from ``probe_video(path, exact=True)`` (or a reader's ``info()``) reuses
    that video's index instead of building it again, and sets the output's frame size (frames of
    another size are rescaled to it). ``threads`` is the decoder's thread count. Frames come upright
    and with square pixels, as a player shows them (``H, W`` = ``info.frame_size(...)``):
    ``autorotate=False`` ignores the display matrix and ``square_pixels=False`` the sample aspect
    ratio (module docstring). Raises :class:`VideoDecodeError`, naming the file and the frame, when
    the file cannot be read or a requested frame does not exist (beyond the end, truncated file).
    """
    with VideoReader(
        path, threads=threads, info=info, autorotate=autorotate, square_pixels=square_pixels
    ) as reader:
        return reader.read(indices, max_gap=max_gap)


def read_all_frames(
    path: str | os.PathLike, *, threads: int = 1, autorotate: bool = True, square_pixels: bool = True
) -> Tensor:
    """Every frame of a video, decoded from the start: uint8 RGB ``(N, H, W, 3)``.

    Decodes until the data ends: a file cut short gives fewer frames than its header's count
    (:func:`read_frames` reports the missing ones instead). ``threads`` is the decoder's thread
    count (0: FFmpeg chooses); ``autorotate`` and ``square_pixels`` as in :func:`read_frames`.
    """
    with VideoReader(path, threads=threads, autorotate=autorotate, square_pixels=square_pixels) as reader:
        return reader.read_all()
