"""Check a dataset's video files before training: every unreadable file, with the reason."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nonlocalnet.data.datasets import BadSample, VideoSample
from nonlocalnet.data.decode import VideoDecodeError, _Reader

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """``total`` files checked, the ``bad`` ones (``index`` = position in the checked list) and the
    wall time."""

    total: int
    bad: list[BadSample]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "total": self.total,
            "ok": self.ok,
            "bad_count": len(self.bad),
            "seconds": self.seconds,
            "bad": [{"index": b.index, "path": b.path, "reason": b.reason} for b in self.bad],
        }


def _check_one(path: str, decode: bool) -> str | None:
    """``None`` when ``path`` is fine, else why not."""
    try:
        with _Reader(path) as reader:
            info = reader.info()
            if decode:
                reader.read([0, info.num_frames - 1])
    except VideoDecodeError as e:
        return e.reason
    except Exception as e:  # a checker reports every file, whatever goes wrong
        return f"{type(e).__name__}: {e}"
    return None


def check_dataset(
    samples: Sequence[VideoSample | str | os.PathLike],
    *,
    decode: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> CheckReport:
    """Probe every video's headers (:func:`probe_video`); with ``decode=True`` also decode its
    first and last frames (catches truncated files whose header is intact). ``num_workers > 0``
    checks files on that many threads (FFmpeg releases the GIL). Returns a :class:`CheckReport`
    listing every bad file with its reason."""
    from tqdm import tqdm

    paths = [s.path if isinstance(s, VideoSample) else os.fspath(s) for s in samples]
    start = time.perf_counter()
    bar = tqdm(total=len(paths), desc="check videos", unit="video", disable=not progress)
    bad: list[BadSample] = []

    def note(i: int, reason: str | None) -> None:
        if reason is not None:
            bad.append(BadSample(i, paths[i], reason))
            bar.set_postfix(bad=len(bad))
        bar.update()

    try:
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                for i, reason in enumerate(pool.map(lambda p: _check_one(p, decode), paths)):
                    note(i, reason)
        else:
            for i, p in enumerate(paths):
                note(i, _check_one(p, decode))
    finally:
        bar.close()
    return CheckReport(len(paths), bad, time.perf_counter() - start)
