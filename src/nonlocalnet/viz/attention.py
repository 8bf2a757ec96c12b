"""Where a non-local block looks: capture a block's input, read one query's attention, draw it
over the video frames (in the spirit of the paper's Figures 1 and 3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch, Rectangle
from torch import Tensor, nn

from nonlocalnet.errors import InvalidValueError
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.viz.png import save_png

__all__ = [
    "attention_map",
    "draw_attention",
    "key_argmax_pixel",
    "nonlocal_inputs",
    "plot_attention",
    "query_to_grid",
]


@torch.no_grad()
def nonlocal_inputs(model: nn.Module, clip: Tensor) -> dict[str, tuple[NonLocalBlock, Tensor]]:
    """Run ``model(clip)`` once and return, for every :class:`NonLocalBlock` (by module name),
    the block and the input it received ``(B, C, T', H', W')``."""
    captured: dict[str, tuple[NonLocalBlock, Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, NonLocalBlock):

            def hook(_: nn.Module, args: tuple, name: str = name, block: NonLocalBlock = module) -> None:
                captured[name] = (block, args[0].detach())

            handles.append(module.register_forward_pre_hook(hook))
    if not handles:
        raise InvalidValueError("the model has no NonLocalBlock")
    was_training = model.training
    model.eval()
    try:
        model(clip)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return captured


def query_to_grid(
    point: Sequence[float], video_shape: Sequence[int], grid: Sequence[int]
) -> tuple[int, int, int]:
    """Pixel coordinates ``(t, y, x)`` of a ``(T, H, W)`` video -> the ``(t', h', w')`` cell of a
    feature grid that covers the video uniformly."""
    return tuple(  # type: ignore[return-value]
        min(int(p * g / s), g - 1) for p, s, g in zip(point, video_shape, grid, strict=True)
    )


@torch.no_grad()
def attention_map(block: NonLocalBlock, x: Tensor, query: tuple[int, int, int]) -> Tensor:
    """The normalised attention ``(T', H', W')`` of one query cell of ``x`` (first clip)."""
    return block.attention_map(x[:1], [query])[0, 0].float().cpu()


def key_argmax_pixel(weights: Tensor, video_shape: Sequence[int]) -> tuple[float, float, float]:
    """Centre, in video pixel coordinates ``(t, y, x)``, of the key cell with the largest weight."""
    cell = np.unravel_index(int(weights.argmax()), tuple(weights.shape))
    t, y, x = ((c + 0.5) * s / g for c, s, g in zip(cell, video_shape, weights.shape, strict=True))
    return float(t), float(y), float(x)


def draw_attention(
    frames: np.ndarray,
    weights: Tensor,
    query: tuple[float, float, float],
    *,
    show: Sequence[int] | None = None,
    boxes: Sequence[tuple[int, int, int, int, int, str]] = (),
    title: str = "",
) -> Figure:
    """One axes per shown frame: frames ``(T, H, W, 3)`` uint8 with the attention ``(T', H', W')``
    of the query at pixel ``(t, y, x)`` as a heat map on every shown frame, the query marked, and
    an arrow from the query to the most attended position. ``boxes``: ``(t0, t1, y, x, size, label)`` outlines
    drawn on frames ``t0 <= t < t1`` (e.g. the planted objects)."""
    T, H, W = frames.shape[:3]
    show = list(show) if show is not None else list(range(T))
    up = torch.nn.functional.interpolate(weights[None, None], size=(T, H, W), mode="nearest")[0, 0].numpy()
    top = up.max() or 1.0
    fig = Figure(figsize=(1.9 * len(show), 2.4), layout="constrained")
    axes = fig.subplots(1, len(show), squeeze=False)[0]
    qt, qy, qx = query
    kt, ky, kx = key_argmax_pixel(weights, (T, H, W))
    for ax, t in zip(axes, show, strict=True):
        ax.imshow(frames[t])
        ax.imshow(up[t], cmap="magma", alpha=0.55, vmin=0, vmax=top, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        for t0, t1, y, x, size, label in boxes:
            if t0 <= t < t1:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, ec="lime", lw=1.2))
                ax.text(x, y - 1.5, label, color="lime", fontsize=6)
        if t == int(qt):
            ax.plot([qx], [qy], marker="o", ms=7, mfc="none", mec="cyan", mew=2)
        ax.set_title(f"t={t}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if int(qt) in show and int(kt) in show:
        arrow = ConnectionPatch(
            xyA=(qx, qy),
            coordsA=axes[show.index(int(qt))].transData,
            xyB=(kx, ky),
            coordsB=axes[show.index(int(kt))].transData,
            arrowstyle="-|>",
            color="cyan",
            lw=1.5,
        )
        fig.add_artist(arrow)
    fig.suptitle(
        title or "attention of the query (cyan) over the clip; arrow: most attended position", fontsize=9
    )
    return fig


def plot_attention(
    frames: np.ndarray,
    weights: Tensor,
    query: tuple[float, float, float],
    path: str | os.PathLike,
    *,
    show: Sequence[int] | None = None,
    boxes: Sequence[tuple[int, int, int, int, int, str]] = (),
    title: str = "",
) -> Path:
    """:func:`draw_attention` written to ``path`` as a PNG (120 dpi); returns ``path``."""
    fig = draw_attention(frames, weights, query, show=show, boxes=boxes, title=title)
    return save_png(fig, path, dpi=120)
