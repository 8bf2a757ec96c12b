"""Does the trained non-local block look at the distant related object? Measure it on held-out
videos and draw one example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nonlocalnet.data import normalize, read_all_frames, test_clip_indices, to_float_cthw
from nonlocalnet.demo.synthetic import SyntheticDataset
from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.models import load_weights
from nonlocalnet.tasks import VideoConfig, load_config
from nonlocalnet.tasks.video import build_model_from_config
from nonlocalnet.viz import attention_map, key_argmax_pixel, nonlocal_inputs, plot_attention, query_to_grid

__all__ = ["attention_study", "cue_hit"]


def _in_cue(t: float, y: float, x: float, cue: dict[str, Any], margin: tuple[float, float]) -> bool:
    start, stop = cue["frames"]
    x0, y0, x1, y1 = cue["box"]
    my, mx = margin
    return start <= t < stop and y0 - my <= y < y1 + my and x0 - mx <= x < x1 + mx


def cue_hit(
    weights: torch.Tensor, video_shape: tuple[int, int, int], cue: dict[str, Any]
) -> tuple[bool, float]:
    """Whether the most attended key cell lies on ``cue`` (its frames and its box, widened by
    half a key cell), and the chance of that for a uniformly random key cell."""
    T, H, W = video_shape
    gt, gh, gw = weights.shape
    margin = (H / gh / 2, W / gw / 2)
    hit = _in_cue(*key_argmax_pixel(weights, video_shape), cue, margin)
    centres = [
        ((a + 0.5) * T / gt, (b + 0.5) * H / gh, (c + 0.5) * W / gw)
        for a in range(gt)
        for b in range(gh)
        for c in range(gw)
    ]
    chance = sum(_in_cue(*p, cue, margin) for p in centres) / len(centres)
    return hit, chance


def _in_clip_frames(cue: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    """``cue`` with its visible frames ``[start, stop)`` renumbered as positions in the clip
    made of video frames ``indices``."""
    start, stop = cue["frames"]
    shown = [k for k, i in enumerate(indices) if start <= i < stop]
    if not shown:
        raise InvalidValueError(
            f"the clip (frames {indices}) never shows the cue at frames [{start}, {stop})"
        )
    return {**cue, "frames": [shown[0], shown[-1] + 1]}


@torch.no_grad()
def attention_study(
    run_dir: Path, data: SyntheticDataset, figure: Path, max_videos: int = 200
) -> dict[str, Any]:
    """For held-out videos: query the non-local block at the late cue (its centre, in its middle
    visible frame) and check whether the attention's argmax falls on the early cue. Draws the
    first video where it does (the first video if none) to ``figure``, saying which and how
    often. Returns hit rate, chance rate and counts."""
    cfg = load_config(run_dir / "config.yaml")
    if not isinstance(cfg, VideoConfig):
        raise InvalidTypeError(f"{run_dir}: expected a video classification run, got task {cfg.task!r}")
    model = build_model_from_config(cfg.model)
    load_weights(model, run_dir / "model.safetensors")
    model.eval()
    hits, chances, example = [], [], None
    metas = data.metadata("val")[:max_videos]
    d = cfg.data
    for meta in metas:
        every = read_all_frames(data.root / meta["path"])
        indices = test_clip_indices(len(every), d.clip_length, d.stride, 1)[0]
        frames = every[indices]  # the clip the model sees; cue frame ranges below in its units
        clip = normalize(to_float_cthw(frames), d.mean, d.std)[None]
        (name, (block, x)), *_ = nonlocal_inputs(model, clip).items()
        shape = (frames.shape[0], frames.shape[1], frames.shape[2])
        early, late = (_in_clip_frames(meta[k], indices) for k in ("early", "late"))
        t_query = (late["frames"][0] + late["frames"][1] - 1) / 2
        point = (t_query, late["center"][1], late["center"][0])
        weights = attention_map(block, x, query_to_grid(point, shape, x.shape[2:]))
        hit, chance = cue_hit(weights, shape, early)
        hits.append(hit)
        chances.append(chance)
        if example is None or (hit and not example[0]):
            example = (hit, meta["path"], frames, weights, point, early, late)
    if example is None:
        raise InvalidValueError(f"no held-out videos to study in {data.root}")
    # draw the first video where the argmax finds the early cue (else the first video)
    hit, path, frames, weights, point, early, late = example
    boxes = [
        (c["frames"][0], c["frames"][1], c["box"][1], c["box"][0], c["box"][2] - c["box"][0], label)
        for c, label in ((early, "early"), (late, "late"))
    ]
    outcome = "finds" if hit else "misses"
    plot_attention(
        np.asarray(frames),
        weights,
        point,
        figure,
        boxes=boxes,
        title=f"{name}: attention of the late cue (cyan) over the clip\nthe arrow (most attended key) "
        f"{outcome} the early cue here; it finds it in {100 * np.mean(hits):.0f}% of {len(hits)} "
        "held-out videos",
    )
    return {
        "block": name,
        "videos": len(metas),
        "hit_rate": float(np.mean(hits)),
        "chance": float(np.mean(chances)),
        "figure": str(figure),
        "example": path,
        "example_hit": bool(hit),
    }
