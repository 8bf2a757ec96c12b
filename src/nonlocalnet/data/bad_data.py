"""Bad-data bookkeeping: a video that cannot be read is never replaced by another; it comes back
as a :class:`BadSample`, travels in :attr:`~nonlocalnet.data.ClipBatch.bad` and is counted by
:class:`BadDataLog`, which stops a run with :class:`DataQualityError` past a threshold."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nonlocalnet.errors import NonLocalNetError

__all__ = ["BadDataLog", "BadSample", "DataQualityError"]

logger = logging.getLogger("nonlocalnet.data")


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


class DataQualityError(NonLocalNetError, RuntimeError):
    """Too many bad samples."""


class BadDataLog:
    """The bad samples met so far, deduplicated by ``(index, path)``.

    :meth:`add` logs each new one once (logger ``"nonlocalnet.data"``, level WARNING);
    :meth:`merge` combines the logs of several ranks (without logging again).
    """

    def __init__(self, noun: str = "video") -> None:
        self.noun = noun  # what a sample is, in messages ("video", "image")
        self._entries: dict[tuple[int, str], BadSample] = {}

    def add(self, bad: Iterable[BadSample]) -> int:
        """Record ``bad``; returns how many were new."""
        new = 0
        for b in bad:
            key = (b.index, b.path)
            if key not in self._entries:
                self._entries[key] = b
                new += 1
                logger.warning("bad %s (sample %d) %s: %s", self.noun, b.index, b.path, b.reason)
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
                f"{self.count} bad {self.noun}s out of {seen} samples seen ({frac:.2%}) exceed the threshold "
                f"{threshold:.2%}: {first}{more}"
            )

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"count": n, "bad": [{"index", "path", "reason"}, ...]}``."""
        return {
            "count": self.count,
            "bad": [{"index": b.index, "path": b.path, "reason": b.reason} for b in self.entries],
        }
