"""Tiny test videos written with PyAV; each frame's index is drawn as an 8-bit block code."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

W, H = 64, 48  # 4 x 2 blocks of 16 x 24 pixels, one bit each


def frame_image(i: int, width: int = W, height: int = H) -> np.ndarray:
    """``(H, W, 3)`` uint8: bit k of ``i`` is block k (black/white), plus a mild gradient."""
    img = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // 2, width // 4
    for k in range(8):
        if (i >> k) & 1:
            r, c = divmod(k, 4)
            img[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    img[..., 1] = np.clip(img[..., 1].astype(int) // 2 + np.arange(width)[None, :], 0, 255)
    return img


def frame_code(frame: torch.Tensor | np.ndarray) -> int:
    """Inverse of :func:`frame_image` for a decoded ``(H, W, 3)`` frame (robust to lossy coding)."""
    f = torch.as_tensor(np.asarray(frame))[..., 0].float()
    h, w = f.shape
    bh, bw = h // 2, w // 4
    code = 0
    for k in range(8):
        r, c = divmod(k, 4)
        block = f[r * bh + 3 : (r + 1) * bh - 3, c * bw + 3 : (c + 1) * bw - 3]
        code |= int(block.mean() > 128) << k
    return code


def write_video(
    path: Path,
    num_frames: int = 48,
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    fps: int = 25,
    gop: int = 6,
    width: int = W,
    height: int = H,
    faststart: bool = False,
    pts: list[int] | None = None,
    sar: Fraction | None = None,
) -> Path:
    """Encode ``num_frames`` coded frames (``pts`` in 1/1000 s overrides the regular timestamps;
    ``sar``: the sample aspect ratio the encoder writes into the bitstream)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt, s.gop_size = width, height, "yuv420p", gop
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        if codec == "libx264":
            s.options = {"crf": "18", "keyint": str(gop), "min-keyint": str(gop), "scenecut": "0"}
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def set_display_matrix(path: Path, matrix: tuple[int, ...]) -> Path:
    """Write a display matrix into an MP4/MOV file's only track header (``tkhd``), as a phone
    records its orientation: 9 ints in FFmpeg's layout (``a b u c d v x y w``; 16.16 fixed point,
    2.30 for ``u v w``), a display point being ``(x y 1) @ matrix``. Independent of the PyAV version
    (no muxer option is needed)."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data.find(b"tkhd", at + 4) < 0, "expected exactly one track header"
    version = data[at + 4]
    # size, type, version+flags, creation, modification, track id, reserved, duration (4 or 8 bytes
    # each by version), 8 reserved, layer, group, volume, 2 reserved: then the matrix
    offset = at - 4 + (60 if version == 1 else 48)
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path
