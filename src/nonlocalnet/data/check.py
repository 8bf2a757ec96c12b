"""Check a dataset's video files before training: every unreadable file with the reason, and,
separately, the readable ones whose header count was wrong or whose timestamps make reads slow."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.data.dataset import sample_frames
from nonlocalnet.data.decode import VideoDecodeError, VideoInfo, VideoReader
from nonlocalnet.data.frame_folder import FrameFolderReader
from nonlocalnet.data.lists import VideoSample
from nonlocalnet.errors import InvalidValueError

__all__ = ["CheckReport", "VideoNote", "check_dataset"]


@dataclass(frozen=True)
class VideoNote:
    """A readable video worth knowing about: ``index`` in the checked list, ``path``, ``detail``."""

    index: int
    path: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "detail": self.detail}


@dataclass
class CheckReport:
    """``total`` files checked, the ``bad`` ones (unreadable: ``index`` = position in the checked
    list), the readable ones whose frame count had to be ``corrected`` (the header's count or
    duration x fps estimate differs from the frames that decode), the ``slow`` ones (timestamps
    unusable for seeking: every read decodes from the start), and the wall time. ``rotated``: the
    videos whose display matrix turns or mirrors them (read upright unless ``data.autorotate`` is
    false), ``anamorphic``: those with non-square pixels (resampled unless ``data.square_pixels``
    is false)."""

    total: int
    bad: list[BadSample]
    seconds: float
    corrected: list[VideoNote] = field(default_factory=list)
    slow: list[VideoNote] = field(default_factory=list)
    rotated: list[VideoNote] = field(default_factory=list)
    anamorphic: list[VideoNote] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No unreadable file (corrected and slow videos are readable)."""
        return not self.bad

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "total": self.total,
            "ok": self.ok,
            "bad_count": len(self.bad),
            "corrected_count": len(self.corrected),
            "slow_count": len(self.slow),
            "seconds": self.seconds,
            "bad": [{"index": b.index, "path": b.path, "reason": b.reason} for b in self.bad],
            "corrected": [n.to_dict() for n in self.corrected],
            "slow": [n.to_dict() for n in self.slow],
            "rotated_count": len(self.rotated),
            "anamorphic_count": len(self.anamorphic),
            "rotated": [n.to_dict() for n in self.rotated],
            "anamorphic": [n.to_dict() for n in self.anamorphic],
        }


def _orientation_note(info: VideoInfo) -> str:
    coded = f"coded {info.width}x{info.height}"
    if info.rotation % 90:
        return (
            f"its display matrix turns it {info.rotation} degrees clockwise ({coded}): not a multiple "
            "of 90, so reads refuse it; set data.autorotate: false to read the frames as coded"
        )
    h, w = info.frame_size(square_pixels=False)
    return (
        f"{info.orientation} for display: {coded}, read upright as {w}x{h} "
        "(data.autorotate: false reads it as coded)"
    )


def _aspect_note(info: VideoInfo) -> str:
    sar = info.sample_aspect_ratio
    h, w = info.frame_size(autorotate=False)
    return (
        f"sample aspect ratio {sar.numerator}:{sar.denominator}: coded {info.width}x{info.height}, read "
        f"with square pixels as {w}x{h} (data.square_pixels: false reads the coded pixels)"
    )


def _check_one(sample: VideoSample, decode: bool) -> VideoInfo | str:
    """The video's exact :class:`VideoInfo`, or why it cannot be read (a frame folder: why its
    images cannot; a time window: also when it holds no frame)."""
    try:
        opened: VideoReader | FrameFolderReader
        if sample.num_frames is not None:
            opened = FrameFolderReader(sample.path, listed_frames=sample.num_frames)
        else:
            opened = VideoReader(sample.path)
        with opened as reader:
            info = reader.info(exact=True)
            frames = sample_frames(sample, reader)
            if decode:
                reader.read([frames[0], frames[-1]])
                info = reader.info()  # the read may have found the timestamps unusable
            return info
    except VideoDecodeError as e:
        return e.reason
    except Exception as e:  # a checker reports every file, whatever goes wrong
        return f"{type(e).__name__}: {e}"


def check_dataset(
    samples: Sequence[VideoSample | str | os.PathLike],
    *,
    decode: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> CheckReport:
    """Index every video (headers and every packet, demuxed; the first frames decoded) and count
    its frames exactly; with ``decode=True`` also decode its first and last frames (catches
    truncated files whose header is intact). A video whose timestamps cannot locate frames is
    decoded whole to count them (so it is slow here as in training). ``num_workers > 0`` checks
    files on that many threads (FFmpeg releases the GIL). Returns a :class:`CheckReport`."""
    from tqdm import tqdm

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InvalidValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    videos = [s if isinstance(s, VideoSample) else VideoSample(os.fspath(s), 0) for s in samples]
    paths = [s.path for s in videos]
    start = time.perf_counter()
    bar = tqdm(total=len(paths), desc="check videos", unit="video", disable=not progress)
    report = CheckReport(len(paths), [], 0.0)

    def note(i: int, result: VideoInfo | str) -> None:
        if isinstance(result, str):
            report.bad.append(BadSample(i, paths[i], result))
            bar.set_postfix(bad=len(report.bad))
        else:
            if result.corrected:
                detail = f"the header says {result.header_frames} frames, {result.num_frames} decode"
                if videos[i].num_frames is not None:
                    detail = (
                        f"the list says {result.header_frames} frames, the folder has {result.num_frames}"
                    )
                report.corrected.append(VideoNote(i, paths[i], detail))
            if result.slow_reason is not None:
                report.slow.append(VideoNote(i, paths[i], result.slow_reason))
            if result.rotated:
                report.rotated.append(VideoNote(i, paths[i], _orientation_note(result)))
            if result.sample_aspect_ratio != 1:
                report.anamorphic.append(VideoNote(i, paths[i], _aspect_note(result)))
        bar.update()

    try:
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                for i, result in enumerate(pool.map(lambda s: _check_one(s, decode), videos)):
                    note(i, result)
        else:
            for i, s in enumerate(videos):
                note(i, _check_one(s, decode))
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
