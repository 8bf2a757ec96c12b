"""A tiny two-class video dataset and a tiny model config for the engine tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import yaml

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def write_video(path: Path, frames: np.ndarray, rate: int = 8) -> None:
    """Lossless H.264 of uint8 ``(T, H, W, 3)`` frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "0", "g": "4"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def moving_square(colour: tuple[int, int, int], seed: int, frames: int = 12, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 40, (frames, size, size, 3), dtype=np.uint8)
    y, x = rng.integers(2, size - 12, 2)
    for t in range(frames):
        xt = (x + t) % (size - 10)
        video[t, y : y + 10, xt : xt + 10] = colour
    return video


def make_dataset(root: Path, per_class: int = 4, seed: int = 0) -> dict[str, Path]:
    """``root/videos/*.mp4``, ``train.txt`` (``path label``), ``classes.txt``."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for label, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            rel = f"videos/{name}_{i}.mp4"
            write_video(root / rel, moving_square(colour, seed=1000 * seed + 10 * label + i))
            lines.append(f"{rel} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(COLOURS) + "\n")
    return {"root": root, "list": root / "train.txt", "classes": root / "classes.txt"}


def tiny_config(paths: dict[str, Path], output: Path, **sections) -> dict:
    """A config dict for a 2-stage toy C2D with one non-local block on 32x32 clips."""
    cfg = {
        "output_dir": str(output),
        "seed": 0,
        "model": {
            "name": "c2d_r50",
            "num_classes": 2,
            "dropout": 0.0,
            "overrides": {
                "stem_width": 8,
                "conv1_temporal_stride": 1,
                "pool1_temporal": 1,
                "pool1_temporal_stride": 1,
                "pool2_temporal": 0,
                "stages": [
                    {"depth": 1, "width": 4, "stride": 1, "temporal_a": [1], "temporal_b": [1]},
                    {
                        "depth": 1,
                        "width": 8,
                        "stride": 2,
                        "temporal_a": [1],
                        "temporal_b": [1],
                        "nonlocal_after": [0],
                    },
                ],
            },
        },
        "data": {
            "train_list": str(paths["list"]),
            "val_list": str(paths["list"]),
            "class_names": str(paths["classes"]),
            "clip_length": 4,
            "stride": 2,
            "num_clips": 2,
            "min_short": 32,
            "max_short": 36,
            "crop": 28,
            "test_short": 32,
            "test_crop": 32,
            "num_crops": 3,
            "num_workers": 0,
        },
        "optim": {"base_lr": 0.1, "base_batch_size": 4, "lr_milestones": [0.8]},
        "train": {"batch_size": 4, "epochs": 2, "log_every": 1, "progress": False},
        "checkpoint": {"keep_last": 10},
        "eval": {"every_epochs": 1, "views": "clip", "batch_size": 4},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section] = {**cfg.get(section, {}), **values}
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path
