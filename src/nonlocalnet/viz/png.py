"""Writing a figure as a PNG file."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from nonlocalnet.atomic import atomic_write

__all__ = ["save_png"]


def save_png(fig: Figure, path: str | os.PathLike, *, dpi: int) -> Path:
    """Write ``fig`` to ``path`` atomically as a PNG of ``figsize * dpi`` pixels (its folder
    created); returns ``path``."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
