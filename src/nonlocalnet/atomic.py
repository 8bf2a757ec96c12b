"""Atomic file writes: a crash or kill never leaves a half-written file under the final name, and
the file gets the permissions ``open()`` would give it (``0o666`` less the umask)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes"]

_PROC_STATUS = "/proc/self/status"  # Linux >= 4.7 reports the umask here


def _umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where the system has it, which
    changes nothing; elsewhere ``os.umask`` must set it to read it: it is set to ``0o077`` (the
    strictest, so a file another thread creates meanwhile is never more open than intended) and
    restored at once."""
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    """The mode ``open(path, "w")`` leaves: an existing file's own, else ``0o666 & ~umask``."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, give it ``open()``'s mode
    (the replaced file's, else ``0o666 & ~umask``; ``mkstemp`` creates it ``0o600``), fsync it, rename
    it over ``path`` and fsync the folder. On any error the temporary file is removed and
    ``path`` is untouched. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode(path))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return path
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)
