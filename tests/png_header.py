"""A PNG file's size in pixels, read from its header."""

import struct
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels; fails unless ``path`` is a PNG file."""
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR", f"{path} is not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
