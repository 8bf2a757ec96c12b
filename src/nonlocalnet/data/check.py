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
from nonlocalnet.data.decode import VideoDecodeError, VideoInfo, VideoReader
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
    unusable for seeking: every read decodes from the start), and the wall time."""

    total: int
    bad: list[BadSample]
    seconds: float
    corrected: list[VideoNote] = field(default_factory=list)
    slow: list[VideoNote] = field(default_factory=list)

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
        }


def _check_one(path: str, decode: bool) -> VideoInfo | str:
    """The video's exact :class:`VideoInfo`, or why it cannot be read."""
    try:
        with VideoReader(path) as reader:
            info = reader.info(exact=True)
            if decode:
                reader.read([0, info.num_frames - 1])
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
    paths = [s.path if isinstance(s, VideoSample) else os.fspath(s) for s in samples]
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
                report.corrected.append(VideoNote(i, paths[i], detail))
            if result.slow_reason is not None:
                report.slow.append(VideoNote(i, paths[i], result.slow_reason))
        bar.update()

    try:
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                for i, result in enumerate(pool.map(lambda p: _check_one(p, decode), paths)):
                    note(i, result)
        else:
            for i, p in enumerate(paths):
                note(i, _check_one(p, decode))
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
