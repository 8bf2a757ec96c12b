"""The built-in long-range video task of ``nonlocalnet demo``: "same colour, far apart".

The task
--------
Every video is ``num_frames`` RGB frames (default 6 frames of 24x24 pixels) of a dark grey
background with i.i.d. Gaussian pixel noise, written as an H.264 ``.mp4``. Two **cues**, filled
squares of ``object_size`` pixels (default 6), are planted in it:

* the **early cue**, of colour ``A``, is visible for ``cue_frames`` frames (default 1) somewhere
  in the first ``cue_window`` frames (default 1: the first frame), at a fixed place;
* the **late cue**, of colour ``B``, for as long in the last ``cue_window`` frames (default: the
  last frame), at another place.

``cue_window=None`` is a quarter of the video, the task's version 3 (16 frames of 32x32, cues of 8
pixels for 4 frames: ``nonlocalnet demo --task v3``), whose frames this version renders
identically. The two cues never share a frame: every early-cue frame is at least ``min_frame_gap``
frames (``num_frames - 2 * window + 1``: 5 by default) before every late-cue frame, and their
centres are at least ``min_distance * min(height, width)`` pixels apart (default half the frame,
Euclidean). The colours come from a palette of ``num_colors`` saturated colours (default 2: red
and green, which differ in brightness as well as hue). With more colours, small networks first
learn the additive rule below, which splits the palette into two groups, and then separate the
colours inside a group one pair at a time; a pair not separated by the end of training stays at
chance, and runs end at discrete levels (83% for 3 colours). The label is binary: **"same"** (1)
if ``A == B`` and **"different"** (0) otherwise. Each split holds exactly half of each class;
``A`` is uniform, and for "different" ``B`` is uniform over the other colours, so each cue's
colour alone says nothing about the label.

**Distractors** (default 1 to 3 per video) are hollow squares (rings) of the same size and the
same palette, visible in every frame and moving in straight lines at 0.5 to 1.5 pixels per frame,
bouncing off the borders. The cues are drawn over them. They make colour counting useless: a
colour's presence in the clip does not say it belongs to a cue, and a network has to tell the
filled cues from the rings (a local, per-frame feature) and then relate the two cues (a
non-local one).

Why a C2D or an I3D cannot solve it (the additive ceiling)
----------------------------------------------------------
A C2D network processes frames independently, an I3D sees ``temporal_receptive_field`` frames at
each position (the demo's: 5, against cues 6 frames apart counting both), and both end with global
average pooling and a linear classifier. No position sees both cues, so the logit is a sum
``u(early frames) + v(late frames) + w(other frames)``: an *additive* function of the two cues.
"Same colour" is an equality, an XOR-like relation, that no additive score expresses exactly. The
best an additive classifier can do on this task is (exact, by mixed-integer programming over all
additive scores ``u(A) + v(B)``; positions, distractors and noise are independent of the label and
can only lower it):

* **3/4 for any number of colours**, if the network can tell the two cues apart (e.g. by their
  side of the frame): predict "same" iff ``r(A) >= r(B)`` for an order ``r`` of the colours. This
  is the XOR ceiling, and no "match" relation with a balanced label goes lower: near-chance
  additive ceilings need relations that are far from every threshold function, which a natural
  same/different question is not;
* **3/4 for 2 colours, 2/3 for 3 or 4** (0.65 for 6, tending to 5/8), if it cannot (``u == v``,
  a network invariant to the frame order and to where each cue is): predict "same" iff both
  colours are in a fixed half of the palette (for 2 colours: iff both cues are red). See
  :func:`additive_ceiling`.

A non-local block after res4 (or res2, res3) lets every position read the features of both cues at once
(the attention can key on "filled square" features); the following convolutions then compare
the colours before the pooling, so a C2D or an I3D with a non-local block can reach 100%.

Files
-----
:func:`generate_long_range_dataset` writes, under ``root``: ``videos/{split}_{i:05d}.mp4``;
``train.txt`` and ``val.txt`` with lines ``videos/train_00000.mp4 LABEL`` (Kinetics/PySlowFast
list format); ``classes.txt`` (``different``, ``same``); ``train_meta.jsonl`` and
``val_meta.jsonl`` with, per video, the path, the label, both cues (colour, visible frames
``[start, stop)``, centre ``[x, y]`` and box ``[x0, y0, x1, y1)`` in pixels) and the distractors
(colour, per-frame boxes); and ``manifest.json``, written last, which marks a complete cache.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from tqdm.auto import tqdm

from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingFileError

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "LongRangeTaskConfig",
    "SyntheticDataset",
    "additive_ceiling",
    "generate_long_range_dataset",
    "load_synthetic_dataset",
    "render_video",
]

CLASS_NAMES: tuple[str, ...] = ("different", "same")
"""Label index -> class name: 0 "different" colours, 1 "same" colour."""

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 40, 40)),
    ("green", (40, 200, 60)),
    ("yellow", (240, 220, 40)),
    ("blue", (50, 90, 240)),
    ("magenta", (220, 60, 220)),
    ("cyan", (40, 210, 220)),
    ("orange", (250, 140, 30)),
    ("white", (235, 235, 235)),
)
"""Object colours (name, RGB); a task uses the first ``num_colors``. Luma (0.299 R + 0.587 G +
0.114 B): red 96, green 136, yellow 205, blue 95."""

_FORMAT = "nonlocalnet-synthetic-long-range"
_VERSION = 4  # 2: yellow before blue, 3 colours; 3: 2 colours; 4: cue_window, 6 frames of 24x24
_SPLITS = {"train": 0, "val": 1}
_CHUNK = 50  # videos per task of a generation worker


@dataclass(frozen=True)
class LongRangeTaskConfig:
    """Parameters of the "same colour, far apart" task (see the module docstring).

    ``num_frames`` must be a multiple of 4; ``cue_frames`` (frames each cue is visible, placed at
    a random offset inside its quarter) at most ``num_frames // 4``. ``distractors`` is the
    inclusive range of ring distractors per video, ``distractor_speed`` the range of their speed
    in pixels per frame. ``noise_std`` is the pixel noise in 0-255 units, ``background`` the mean
    grey level (jittered by up to ``background_jitter`` per video). ``crf`` is the H.264 quality
    (0 lossless, larger is smaller and blurrier); frames are encoded in yuv444p so that colours
    keep their full resolution. ``seed`` makes everything deterministic.
    """

    num_frames: int = 6
    height: int = 24
    width: int = 24
    num_colors: int = 2
    object_size: int = 6
    cue_frames: int = 1
    cue_window: int | None = 1
    min_distance: float = 0.5
    distractors: tuple[int, int] = (1, 3)
    distractor_speed: tuple[float, float] = (0.5, 1.5)
    noise_std: float = 10.0
    background: int = 50
    background_jitter: int = 10
    num_train: int = 2000
    num_val: int = 500
    seed: int = 0
    fps: int = 8
    crf: int = 17

    def __post_init__(self) -> None:
        self._check_cues()
        self._check_geometry()
        self._check_appearance()
        self._check_output()

    def _check_cues(self) -> None:
        """``cue_window`` and ``cue_frames`` against ``num_frames``."""
        if self.cue_window is None:
            if self.num_frames < 4 or self.num_frames % 4:
                raise InvalidValueError(
                    f"num_frames must be a positive multiple of 4 when cue_window is None (the cues "
                    f"then appear in the first and last quarter), got {self.num_frames}"
                )
        elif (
            isinstance(self.cue_window, bool)
            or not isinstance(self.cue_window, int)
            or not 1 <= self.cue_window <= self.num_frames // 2
        ):
            raise InvalidValueError(
                f"cue_window must be None or an int in [1, num_frames // 2 = {self.num_frames // 2}], "
                f"got {self.cue_window!r}"
            )
        if not 1 <= self.cue_frames <= self.window:
            source = "cue_window" if self.cue_window is not None else "num_frames // 4"
            raise InvalidValueError(
                f"cue_frames must be in [1, {self.window}] (the frames a cue may appear in: {source}), "
                f"got {self.cue_frames}"
            )

    def _check_geometry(self) -> None:
        """Frame size, palette, object size and the cues' distance."""
        if self.height % 2 or self.width % 2 or self.height < 8 or self.width < 8:
            raise InvalidValueError(f"height and width must be even and >= 8, got {self.height}x{self.width}")
        if not 2 <= self.num_colors <= len(PALETTE):
            raise InvalidValueError(f"num_colors must be in [2, {len(PALETTE)}], got {self.num_colors}")
        if not 3 <= self.object_size <= min(self.height, self.width) // 2:
            raise InvalidValueError(
                f"object_size must be in [3, {min(self.height, self.width) // 2}] for "
                f"{self.height}x{self.width} frames, got {self.object_size}"
            )
        if not 0.0 <= self.min_distance:
            raise InvalidValueError(f"min_distance must be >= 0, got {self.min_distance}")
        reach = math.hypot(self.height - self.object_size, self.width - self.object_size)
        if self.min_distance * min(self.height, self.width) > 0.9 * reach:
            raise InvalidValueError(
                f"min_distance={self.min_distance} leaves almost no room for two {self.object_size}px cues "
                f"in {self.height}x{self.width} frames"
            )

    def _check_appearance(self) -> None:
        """Distractors, noise and background."""
        lo, hi = self.distractors
        if not 0 <= lo <= hi:
            raise InvalidValueError(
                f"distractors must be a range (min, max) with 0 <= min <= max, got {self.distractors}"
            )
        vlo, vhi = self.distractor_speed
        if not 0.0 <= vlo <= vhi:
            raise InvalidValueError(
                f"distractor_speed must be a range (min, max) >= 0, got {self.distractor_speed}"
            )
        if self.noise_std < 0:
            raise InvalidValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if (
            not 0
            <= self.background - self.background_jitter
            <= self.background + self.background_jitter
            <= 255
        ):
            raise InvalidValueError("background +- background_jitter must lie in [0, 255]")

    def _check_output(self) -> None:
        """Split sizes and the encoder's settings."""
        if self.num_train < 2 or self.num_val < 2:
            raise InvalidValueError(
                f"num_train and num_val must be >= 2, got {self.num_train}, {self.num_val}"
            )
        if not 0 <= self.crf <= 51:
            raise InvalidValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.fps < 1:
            raise InvalidValueError(f"fps must be >= 1, got {self.fps}")

    @property
    def window(self) -> int:
        """Frames at each end of the video a cue may appear in: ``cue_window``, or a quarter of
        the video when it is ``None``."""
        return self.num_frames // 4 if self.cue_window is None else self.cue_window

    @property
    def min_frame_gap(self) -> int:
        """Fewest frames from the early cue's last frame to the late cue's first (1: adjacent)."""
        return self.num_frames - 2 * self.window + 1

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in PALETTE[: self.num_colors])

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LongRangeTaskConfig:
        kwargs = dict(data)
        for key in ("distractors", "distractor_speed"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


@dataclass(frozen=True)
class SyntheticDataset:
    """A generated dataset on disk: list files (``path label`` lines, paths relative to ``root``),
    class names by label index, and the config it was generated from."""

    root: Path
    train_list: Path
    val_list: Path
    class_names: tuple[str, ...]
    config: LongRangeTaskConfig

    @property
    def classes_file(self) -> Path:
        return self.root / "classes.txt"

    def metadata(self, split: str) -> list[dict[str, Any]]:
        """Per-video metadata of ``split`` (``"train"`` or ``"val"``), in list-file order."""
        if split not in _SPLITS:
            raise InvalidValueError(f"unknown split {split!r}; expected one of {tuple(_SPLITS)}")
        with open(self.root / f"{split}_meta.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def additive_ceiling(num_colors: int, *, symmetric: bool = False) -> float:
    """Best accuracy of a classifier ``u(A) + v(B) > 0`` on the balanced same/different task.

    ``symmetric=False``: any additive score (``u`` and ``v`` may differ): 3/4 for every
    ``num_colors`` (predict "same" iff ``r(A) >= r(B)``). ``symmetric=True`` (``u == v``):
    ``max_d 1/2 + d/(2K) - d(d-1)/(2K(K-1))``, predicting "same" iff both colours lie in a set of
    ``d`` colours (3/4 for ``K`` = 2, 2/3 for 3 or 4). Both values agree with an exact mixed-integer program.
    """
    k = num_colors
    if not isinstance(k, int) or k < 2:
        raise InvalidValueError(f"num_colors must be an int >= 2, got {num_colors!r}")
    if not symmetric:
        return 0.75
    return max(0.5 + d / (2 * k) - d * (d - 1) / (2 * k * (k - 1)) for d in range(k + 1))


# ----------------------------------------------------------------------------- rendering
def _place_cues(config: LongRangeTaskConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    s, h, w = config.object_size, config.height, config.width
    need = config.min_distance * min(h, w)
    for _ in range(10_000):
        b1 = [int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))]
        b2 = [int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))]
        if math.hypot(b1[0] - b2[0], b1[1] - b2[1]) >= need:
            return [*b1, b1[0] + s, b1[1] + s], [*b2, b2[0] + s, b2[1] + s]
    raise InvalidValueError(
        f"could not place two cues {need:.1f}px apart; lower min_distance"
    )  # pragma: no cover


def _distractor_boxes(config: LongRangeTaskConfig, rng: np.random.Generator) -> list[list[int]]:
    """Per-frame boxes of one bouncing distractor."""
    s, h, w = config.object_size, config.height, config.width
    x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
    speed = rng.uniform(*config.distractor_speed)
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    boxes = []
    for _ in range(config.num_frames):
        x0, y0 = round(x), round(y)
        boxes.append([x0, y0, x0 + s, y0 + s])
        x, y = x + vx, y + vy
        if not 0 <= x <= w - s:
            vx, x = -vx, min(max(x, 0.0), float(w - s))
        if not 0 <= y <= h - s:
            vy, y = -vy, min(max(y, 0.0), float(h - s))
    return boxes


def _draw_ring(frame: np.ndarray, box: list[int], color: np.ndarray, thickness: int) -> None:
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = color
    frame[y0 + thickness : y1 - thickness, x0 + thickness : x1 - thickness] = np.nan


def render_video(config: LongRangeTaskConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one video of the task with a random label: frames ``(T, H, W, 3)`` uint8 and its
    metadata (``label``, ``early``/``late`` cues, ``distractors``). :func:`generate_long_range_dataset`
    balances labels itself through :func:`_render_labelled`."""
    return _render_labelled(config, rng, int(rng.integers(0, 2)))


def _render_labelled(
    config: LongRangeTaskConfig, rng: np.random.Generator, label: int
) -> tuple[np.ndarray, dict[str, Any]]:
    t, h, w, k = config.num_frames, config.height, config.width, config.num_colors
    colors = np.array([rgb for _, rgb in PALETTE[:k]], dtype=np.float32)
    names = config.color_names
    a = int(rng.integers(0, k))
    b = a if label == 1 else int((a + rng.integers(1, k)) % k)
    window = config.window
    start_early = int(rng.integers(0, window - config.cue_frames + 1))
    start_late = t - window + int(rng.integers(0, window - config.cue_frames + 1))
    box_early, box_late = _place_cues(config, rng)

    n_distractors = int(rng.integers(config.distractors[0], config.distractors[1] + 1))
    distractors: list[dict[str, Any]] = []
    for _ in range(n_distractors):
        c = int(rng.integers(0, k))
        distractors.append({"color": names[c], "color_index": c, "boxes": _distractor_boxes(config, rng)})

    background = config.background + int(
        rng.integers(-config.background_jitter, config.background_jitter + 1)
    )
    noise = rng.normal(0.0, config.noise_std, size=(t, h, w, 3)).astype(np.float32)
    thickness = max(1, config.object_size // 4)
    video = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        canvas = np.full((h, w, 3), np.nan, dtype=np.float32)
        for d in distractors:
            ring = np.full((h, w, 3), np.nan, dtype=np.float32)
            _draw_ring(ring, d["boxes"][i], colors[d["color_index"]], thickness)
            canvas = np.where(np.isnan(ring), canvas, ring)
        for color, box, start in ((a, box_early, start_early), (b, box_late, start_late)):
            if start <= i < start + config.cue_frames:
                x0, y0, x1, y1 = box
                canvas[y0:y1, x0:x1] = colors[color]
        canvas = np.where(np.isnan(canvas), np.float32(background), canvas)
        video[i] = np.clip(np.rint(canvas + noise[i]), 0, 255).astype(np.uint8)

    def cue(color: int, box: list[int], start: int) -> dict[str, Any]:
        return {
            "color": names[color],
            "color_index": color,
            "frames": [start, start + config.cue_frames],
            "center": [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
            "box": box,
        }

    early, late = cue(a, box_early, start_early), cue(b, box_late, start_late)
    meta = {
        "label": label,
        "label_name": CLASS_NAMES[label],
        "early": early,
        "late": late,
        "distance_px": math.dist(early["center"], late["center"]),
        "frame_gap": start_late - (start_early + config.cue_frames - 1),
        "background": background,
        "distractors": distractors,
    }
    return video, meta


# ----------------------------------------------------------------------------- writing
# x264's SIMD code reads uninitialised memory (in its lookahead) on these tiny frames: identical
# input then encodes differently from run to run. Its plain C code ("asm=0") is deterministic.
_X264_OPTIONS = {"preset": "fast", "x264-params": "asm=0"}


def _encode(path: Path, video: np.ndarray, config: LongRangeTaskConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=config.fps, options={"crf": str(config.crf), **_X264_OPTIONS}
        )
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv444p"
        stream.codec_context.thread_count = 1
        for index, rgb in enumerate(video):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _split_labels(config: LongRangeTaskConfig, split: str) -> list[int]:
    """The labels of ``split``: exactly balanced (the extra one of an odd count is "same") and
    shuffled."""
    n = config.num_train if split == "train" else config.num_val
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    np.random.default_rng(np.random.SeedSequence([config.seed, _SPLITS[split]])).shuffle(labels)
    return [int(v) for v in labels]


def _write_videos(
    root: Path, config: LongRangeTaskConfig, split: str, items: list[tuple[int, int]]
) -> list[str]:
    """Render and encode the videos ``(index, label)`` of ``split``, each from its own generator;
    returns their metadata lines."""
    metas = []
    for i, label in items:
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SPLITS[split], i]))
        rel = _video_path(split, i)
        video, meta = _render_labelled(config, rng, label)
        _encode(root / rel, video, config)
        metas.append(json.dumps({"path": rel, **meta}) + "\n")
    return metas


def _video_path(split: str, i: int) -> str:
    return f"videos/{split}_{i:05d}.mp4"


def _dataset(root: Path, config: LongRangeTaskConfig) -> SyntheticDataset:
    return SyntheticDataset(root, root / "train.txt", root / "val.txt", CLASS_NAMES, config)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _FORMAT else None


def _cache_complete(root: Path, manifest: dict[str, Any]) -> bool:
    return all((root / rel).is_file() for rel in manifest.get("files", []))


def load_synthetic_dataset(root: str | os.PathLike[str]) -> SyntheticDataset:
    """Open a dataset that :func:`generate_long_range_dataset` completed under ``root``."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None:
        raise MissingFileError(
            f"no complete synthetic dataset under {root} (missing or foreign manifest.json)"
        )
    if manifest.get("version") != _VERSION:
        raise MissingFileError(
            f"the synthetic dataset under {root} has format version {manifest.get('version')}, this "
            f"library reads version {_VERSION}; generate it again (generate_long_range_dataset)"
        )
    if not _cache_complete(root, manifest):
        raise MissingFileError(f"the synthetic dataset under {root} is missing files; generate it again")
    return _dataset(root, LongRangeTaskConfig.from_json(manifest["config"]))


def generate_long_range_dataset(
    root: str | os.PathLike[str],
    config: LongRangeTaskConfig | None = None,
    *,
    progress: bool = True,
    on_mismatch: Literal["regenerate", "error"] = "regenerate",
    workers: int = 1,
) -> SyntheticDataset:
    """Write the task's train and val videos under ``root`` (see the module docstring), or reuse
    them.

    The cache is ``root/manifest.json``, written last: if it exists, holds the same config and
    every file it lists exists, nothing is written. If it holds another config,
    ``on_mismatch="regenerate"`` (default) deletes the old manifest, list files and videos and
    generates anew; ``"error"`` raises ``ValueError`` and leaves the folder as it is. A generation
    that was interrupted has no manifest and is redone. Everything is a deterministic function of
    ``config`` (same seed: identical decoded frames, lists and metadata), whatever the number of
    ``workers`` (processes rendering and encoding videos side by side).
    """
    config = LongRangeTaskConfig() if config is None else config
    if not isinstance(config, LongRangeTaskConfig):
        raise InvalidTypeError(f"config must be a LongRangeTaskConfig, got {type(config).__name__}")
    if not isinstance(workers, int) or workers < 1:
        raise InvalidValueError(f"workers must be a positive int, got {workers!r}")
    if on_mismatch not in ("regenerate", "error"):
        raise InvalidValueError(f"on_mismatch must be 'regenerate' or 'error', got {on_mismatch!r}")
    root = Path(root)
    if _reuse_cache(root, config, on_mismatch):
        return _dataset(root, config)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    files = []
    total = config.num_train + config.num_val
    pool = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    )
    try:
        with tqdm(total=total, desc="synthetic videos", unit="video", disable=not progress) as bar:
            for split in _SPLITS:
                files += _write_split(root, config, split, pool, bar)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_text(root / "classes.txt", "".join(f"{name}\n" for name in CLASS_NAMES))
    files.append("classes.txt")
    manifest = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": config.to_json(),
        "class_names": list(CLASS_NAMES),
        "num_train": config.num_train,
        "num_val": config.num_val,
        "files": files,
    }
    _write_text(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return _dataset(root, config)


def _reuse_cache(root: Path, config: LongRangeTaskConfig, on_mismatch: str) -> bool:
    """Whether ``root`` holds the complete dataset of ``config``; if not, its manifest is removed
    (and its videos, when they are another config's) or, with ``on_mismatch="error"`` and another
    config, an error raised."""
    manifest = _read_manifest(root)
    if manifest is None:
        return False
    same = manifest.get("version") == _VERSION and manifest.get("config") == config.to_json()
    if same and _cache_complete(root, manifest):
        return True
    if not same and on_mismatch == "error":
        raise InvalidValueError(
            f"{root} holds a synthetic dataset generated with another config "
            f"({manifest.get('config')}); pass on_mismatch='regenerate' or another root"
        )
    (root / "manifest.json").unlink()  # from here on the folder is not a complete cache
    if not same:
        shutil.rmtree(root / "videos", ignore_errors=True)
    return False


def _write_split(
    root: Path, config: LongRangeTaskConfig, split: str, pool: ProcessPoolExecutor | None, bar: tqdm
) -> list[str]:
    """Write the videos, list file and metadata of ``split`` (in chunks, on ``pool`` if given);
    returns the files written, relative to ``root``."""
    labels = _split_labels(config, split)
    items = list(enumerate(labels))
    chunks = [items[k : k + _CHUNK] for k in range(0, len(items), _CHUNK)]
    write = partial(_write_videos, root, config, split)
    parts = map(write, chunks) if pool is None else pool.map(write, chunks)
    metas = []
    for part in parts:
        metas += part
        bar.update(len(part))
    paths = [_video_path(split, i) for i in range(len(labels))]
    _write_text(root / f"{split}.txt", "".join(f"{p} {y}\n" for p, y in zip(paths, labels, strict=True)))
    _write_text(root / f"{split}_meta.jsonl", "".join(metas))
    return [*paths, f"{split}.txt", f"{split}_meta.jsonl"]
