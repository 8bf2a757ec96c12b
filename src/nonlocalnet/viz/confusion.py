"""Confusion matrices as CSV and PNG."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nonlocalnet.viz.png import save_png

__all__ = ["draw_confusion", "plot_confusion", "write_confusion_csv"]


def write_confusion_csv(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Rows: true class, columns: predicted class (counts), with a header of class names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion, strict=True):
            writer.writerow([name, *map(int, row)])
    return path


def draw_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """The row-normalised confusion matrix ``(K, K)`` (rows: true class) as an image; class labels
    drawn when there are at most 40."""
    k = len(class_names)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * k, 30)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion (video level)")
    return fig


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """:func:`draw_confusion` written to ``path`` as a PNG (110 dpi); returns ``path``."""
    return save_png(draw_confusion(confusion, class_names, title), path, dpi=110)
