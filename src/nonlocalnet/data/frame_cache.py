"""Decoded videos kept in memory, for small data sets read for many epochs."""

from __future__ import annotations

from torch import Tensor

__all__ = ["FrameCache"]


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
