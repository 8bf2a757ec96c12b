"""Training curves from the JSONL metrics log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nonlocalnet.viz.png import save_png

__all__ = ["draw_training_curves", "plot_training_curves"]


_VAL_CURVES = (  # (key of a "val" record, label, factor to percent)
    ("clip_top1", "val clip top-1", 100.0),
    ("video_top1", "val video top-1", 100.0),
    ("box_AP", "val box AP", 1.0),
    ("mask_AP", "val mask AP", 1.0),
    ("kp_AP", "val keypoint AP", 1.0),
)


def draw_training_curves(records: list[dict[str, Any]], title: str = "") -> Figure:
    """Three axes against the optimiser step: loss, accuracy (train top-1 and validation, in %)
    or, for detectors, COCO AP, and the learning rate; from the ``kind == "train"`` and
    ``kind == "val"`` records of the metrics log."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    if train and "top1" in train[0]:
        ax_acc.plot(steps, [100 * r["top1"] for r in train], label="train clip top-1", alpha=0.6)
    for key, label, scale in _VAL_CURVES:
        points = [(r["step"], scale * r[key]) for r in val if key in r]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
    detection = any("box_AP" in r for r in val)
    ax_acc.set(
        xlabel="step",
        ylabel="AP (%)" if detection else "accuracy (%)",
        title="validation AP" if detection else "accuracy",
    )
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train])
    ax_lr.set(xlabel="step", ylabel="lr", title="learning rate")
    if title:
        fig.suptitle(title)
    return fig


def plot_training_curves(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """:func:`draw_training_curves` written to ``path`` as a PNG (110 dpi); returns ``path``."""
    return save_png(draw_training_curves(records, title), path, dpi=110)
