"""Clip transforms on tensors (plain torch): the paper's training augmentation and test views.

Videos are float ``(3, T, H, W)`` (channels first, RGB, values 0..255 until :func:`normalize`);
decoded frames are uint8 ``(T, H, W, 3)``. Randomness comes only from the ``generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nonlocalnet.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "TransformConfig",
    "center_crop",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "random_short_side_scale",
    "resize_short_side",
    "spatial_crops",
    "test_views",
    "to_float_cthw",
    "train_transform",
]


def _check_video(video: Tensor, name: str = "video") -> None:
    if not isinstance(video, Tensor):
        raise InvalidTypeError(f"{name} must be a torch.Tensor (3, T, H, W), got {type(video).__name__}")
    if video.ndim != 4 or video.shape[0] != 3:
        raise InvalidValueError(f"{name} must have shape (3, T, H, W), got {tuple(video.shape)}")
    if not video.is_floating_point():
        raise InvalidTypeError(f"{name} must be a floating-point tensor (3, T, H, W), got {video.dtype}")


def _check_size(size: int, name: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidValueError(f"{name} must be a positive integer, got {size!r}")


def _check_fits(video: Tensor, size: int, what: str) -> None:
    h, w = video.shape[-2:]
    if size > h or size > w:
        raise InvalidValueError(f"{what}: crop {size}x{size} is larger than the frame {h}x{w} (H x W)")


def to_float_cthw(frames: Tensor) -> Tensor:
    """uint8 ``(T, H, W, 3)`` frames -> float32 ``(3, T, H, W)`` with values 0..255."""
    if not isinstance(frames, Tensor):
        raise InvalidTypeError(f"frames must be a torch.Tensor (T, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise InvalidTypeError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise InvalidValueError("frames must hold at least one frame, got shape (0, H, W, 3)")
    return frames.permute(3, 0, 1, 2).to(torch.float32).contiguous()


def resize_short_side(video: Tensor, size: int) -> Tensor:
    """Resize ``(3, T, H, W)`` so that its short side is ``size`` (aspect ratio kept, the long side
    rounded to the nearest pixel); bilinear, antialiased when shrinking. Returns ``(3, T, H', W')``."""
    _check_video(video)
    _check_size(size)
    h, w = video.shape[-2:]
    if h <= w:
        new = (size, max(round(w * size / h), 1))
    else:
        new = (max(round(h * size / w), 1), size)
    if new == (h, w):
        return video
    c, t = video.shape[:2]
    out = F.interpolate(
        video.reshape(1, c * t, h, w),
        size=new,
        mode="bilinear",
        align_corners=False,
        antialias=new[0] < h or new[1] < w,
    )
    return out.reshape(c, t, *new)


def random_short_side_scale(
    video: Tensor, min_size: int, max_size: int, *, generator: torch.Generator
) -> Tensor:
    """:func:`resize_short_side` to a size drawn uniformly from the integers in
    ``[min_size, max_size]`` (the paper: [256, 320])."""
    _check_size(min_size, "min_size")
    _check_size(max_size, "max_size")
    if min_size > max_size:
        raise InvalidValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
    size = int(torch.randint(min_size, max_size + 1, (1,), generator=generator))
    return resize_short_side(video, size)


def random_crop(video: Tensor, size: int, *, generator: torch.Generator) -> Tensor:
    """A ``size x size`` crop at a uniformly random position: ``(3, T, size, size)``."""
    _check_video(video)
    _check_size(size)
    _check_fits(video, size, "random_crop")
    h, w = video.shape[-2:]
    y = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    x = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return video[..., y : y + size, x : x + size]


def center_crop(video: Tensor, size: int) -> Tensor:
    """The central ``size x size`` crop (offsets rounded down): ``(3, T, size, size)``."""
    _check_video(video)
    _check_size(size)
    _check_fits(video, size, "center_crop")
    h, w = video.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return video[..., y : y + size, x : x + size]


def spatial_crops(video: Tensor, size: int, num_crops: int = 3) -> list[Tensor]:
    """``num_crops`` ``size x size`` crops evenly spaced along the long side, centred on the short
    side: left/centre/right for a landscape video, top/centre/bottom for a portrait one.

    The test protocol resizes the short side to ``size`` first (:func:`resize_short_side`), so the
    crops span the whole short side. Crop ``k`` starts at ``k * (L - size) / (num_crops - 1)``
    (rounded half up) along the long side ``L``; ``num_crops = 1`` gives the centre crop.
    """
    _check_video(video)
    _check_size(size)
    _check_size(num_crops, "num_crops")
    _check_fits(video, size, "spatial_crops")
    if num_crops == 1:
        return [center_crop(video, size)]
    h, w = video.shape[-2:]
    room = max(h, w) - size
    offsets = [(2 * k * room + num_crops - 1) // (2 * (num_crops - 1)) for k in range(num_crops)]
    if h > w:
        x = (w - size) // 2
        return [video[..., o : o + size, x : x + size] for o in offsets]
    y = (h - size) // 2
    return [video[..., y : y + size, o : o + size] for o in offsets]


def random_horizontal_flip(video: Tensor, p: float = 0.5, *, generator: torch.Generator) -> Tensor:
    """Mirror left-right (the last axis) with probability ``p``."""
    _check_video(video)
    if not 0.0 <= p <= 1.0:
        raise InvalidValueError(f"p must be in [0, 1], got {p}")
    if float(torch.rand((), generator=generator)) < p:
        return video.flip(-1)
    return video


def normalize(
    video: Tensor, mean: float | Sequence[float] = 114.75, std: float | Sequence[float] = 57.375
) -> Tensor:
    """``(video - mean) / std`` on ``(3, T, H, W)``; ``mean``/``std`` are scalars or one value per
    channel. The defaults are the paper's code: ``(x - 114.75) / 57.375`` on RGB 0..255."""
    _check_video(video)

    def per_channel(value: float | Sequence[float], name: str) -> Tensor:
        v = torch.as_tensor(value, dtype=video.dtype, device=video.device)
        if v.ndim == 0:
            v = v.expand(3)
        if v.shape != (3,):
            raise InvalidValueError(f"{name} must be a scalar or 3 per-channel values, got {value!r}")
        return v.view(3, 1, 1, 1)

    m, s = per_channel(mean, "mean"), per_channel(std, "std")
    if bool((s == 0).any()):
        raise InvalidValueError(f"std must be non-zero, got {std!r}")
    return (video - m) / s


@dataclass(frozen=True)
class TransformConfig:
    """The paper's augmentation (train) and views (test).

    Train: short side uniform in ``[min_short, max_short]``, random ``crop x crop``, random
    horizontal flip. Test: short side ``test_short``, ``num_crops`` crops of
    ``test_crop x test_crop`` along the long side. Both normalise with ``mean``/``std``.
    """

    min_short: int = 256
    max_short: int = 320
    crop: int = 224
    flip: bool = True
    test_short: int = 256
    test_crop: int = 256
    num_crops: int = 3
    mean: tuple[float, ...] = (114.75,) * 3
    std: tuple[float, ...] = (57.375,) * 3

    def __post_init__(self) -> None:
        for name in ("min_short", "max_short", "crop", "test_short", "test_crop", "num_crops"):
            _check_size(getattr(self, name), name)
        if self.min_short > self.max_short:
            raise InvalidValueError(f"min_short ({self.min_short}) must be <= max_short ({self.max_short})")
        if self.crop > self.min_short:
            raise InvalidValueError(f"crop ({self.crop}) must be <= min_short ({self.min_short})")
        if self.test_crop > self.test_short:
            raise InvalidValueError(f"test_crop ({self.test_crop}) must be <= test_short ({self.test_short})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) and len(value) not in (1, 3):
                raise InvalidValueError(f"{name} must be a scalar, 1 or 3 values, got {value!r}")


def _stats(value: float | Sequence[float]) -> float | Sequence[float]:
    return value[0] if not isinstance(value, (int, float)) and len(value) == 1 else value


def train_transform(frames: Tensor, cfg: TransformConfig, *, generator: torch.Generator) -> Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised float32 ``(3, T, crop, crop)``: random short-side scale,
    random crop, random flip (draws from ``generator`` in that order)."""
    video = random_short_side_scale(to_float_cthw(frames), cfg.min_short, cfg.max_short, generator=generator)
    video = random_crop(video, cfg.crop, generator=generator)
    if cfg.flip:
        video = random_horizontal_flip(video, generator=generator)
    return normalize(video, _stats(cfg.mean), _stats(cfg.std)).contiguous()


def test_views(frames: Tensor, cfg: TransformConfig) -> Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised float32 ``(num_crops, 3, T, test_crop, test_crop)``:
    short side to ``test_short``, then :func:`spatial_crops`."""
    video = resize_short_side(to_float_cthw(frames), cfg.test_short)
    crops = spatial_crops(video, cfg.test_crop, cfg.num_crops)
    return torch.stack([normalize(c, _stats(cfg.mean), _stats(cfg.std)) for c in crops])


# the names are the API's; keep pytest from collecting them where tests import them
test_views.__test__ = False  # type: ignore[attr-defined]
