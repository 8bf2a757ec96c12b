"""Read and write images (Pillow) and videos (PyAV) for the ``denoise`` command."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = ["IMAGE_SUFFIXES", "denoise_file", "read_image", "write_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | os.PathLike) -> Tensor:
    """``(C, H, W)`` float32 in [0, 1] (grayscale C = 1, colour C = 3; alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        mode = "L" if im.mode in ("L", "I", "I;16", "1") else "RGB"
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_image(path: str | os.PathLike, image: Tensor) -> None:
    """Write ``(C, H, W)`` in [0, 1] (values outside are clipped) as 8-bit PNG/JPEG/..."""
    from PIL import Image

    arr = _to_uint8(image)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)


def _denoise_video(
    src: Path, dst: Path, denoise: Callable[[Tensor], Tensor], chunk: int, context: int, progress: bool
) -> int:
    """Decode, denoise ``chunk`` frames at a time (with ``context`` neighbours on each side, so
    the result equals denoising the whole video at once), encode H.264."""
    import av
    from tqdm import tqdm

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or 25
        frames = [
            torch.from_numpy(f.to_ndarray(format="rgb24").astype(np.float32) / 255.0).permute(2, 0, 1)
            for f in container.decode(stream)
        ]
    if not frames:
        raise InvalidValueError(f"{src} has no decodable video frames")
    video = torch.stack(frames)  # (T, 3, H, W)
    out = torch.empty_like(video)
    bar = tqdm(total=len(frames), desc=f"denoise {src.name}", unit="frame", disable=not progress)
    for s in range(0, len(frames), chunk):
        lo, hi = max(0, s - context), min(len(frames), s + chunk + context)
        out[s : s + chunk] = denoise(video[lo:hi])[s - lo : s - lo + min(chunk, len(frames) - s)]
        bar.update(min(chunk, len(frames) - s))
    bar.close()
    h, w = video.shape[-2:]
    with av.open(str(dst), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for frame in out:
            arr = _to_uint8(frame).transpose(1, 2, 0)[: h - h % 2, : w - w % 2]
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return len(frames)


def denoise_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    image_fn: Callable[[Tensor], Tensor],
    video_fn: Callable[[Tensor], Tensor],
    temporal_context: int = 1,
    progress: bool = True,
) -> str:
    """Denoise an image or a video file into ``dst``; returns a one-line summary."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise MissingFileError(f"no such file: {src}")
    if src.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(src)
        write_image(dst, image_fn(image))
        return f"{src} ({image.shape[0]} x {image.shape[1]} x {image.shape[2]}) -> {dst}"
    n = _denoise_video(src, dst, video_fn, chunk=8, context=temporal_context, progress=progress)
    return f"{src} ({n} frames) -> {dst}"
