"""Training curves from the JSONL metrics log."""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["plot_training_curves", "read_jsonl"]


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Deprecated alias of :func:`nonlocalnet.engine.read_jsonl` (a log reader, not a figure)."""
    warnings.warn(
        "nonlocalnet.viz.read_jsonl is deprecated: use nonlocalnet.engine.read_jsonl",
        DeprecationWarning,
        stacklevel=2,
    )
    return importlib.import_module("nonlocalnet.engine.runlog").read_jsonl(path)


def plot_training_curves(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and lr against the optimiser step (``kind == "train"`` records), and validation
    accuracy (``kind == "val"``), as one PNG."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    if train and "top1" in train[0]:
        ax_acc.plot(steps, [100 * r["top1"] for r in train], label="train clip top-1", alpha=0.6)
    for key, label in (("clip_top1", "val clip top-1"), ("video_top1", "val video top-1")):
        points = [(r["step"], 100 * r[key]) for r in val if key in r]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train])
    ax_lr.set(xlabel="step", ylabel="lr", title="learning rate")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
