"""Fetch a file once into a cache folder: a progress bar, atomic, checked, one download at a time.

The cache folder follows ``torch.hub``: ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``,
by default ``~/.cache/torch/hub/checkpoints``), so files torchvision already downloaded are found;
``$NONLOCALNET_CACHE_DIR`` or a ``cache_dir`` argument replaces it.

A download goes to a temporary ``.tmp`` file in the same folder, is checked (its length, and its
SHA-256 where known: a full digest, or torchvision's convention of a digest prefix in the file
name, ``resnet50-0676ba61.pth``), and only then renamed to its final name: an interrupted or
corrupt download is never used. Processes asking for the same file at once (``torchrun`` ranks,
parallel jobs) take an exclusive ``fcntl`` lock on ``<file>.lock``: one downloads, the others wait
and then find the file. The kernel drops the lock of a process that dies, so a lock is never stale;
``.tmp`` files a killed download left are removed by the next one to take the lock.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from nonlocalnet.atomic import atomic_write
from nonlocalnet.errors import InvalidValueError, NonLocalNetError

__all__ = [
    "CACHE_DIR_ENV",
    "ChecksumError",
    "DownloadError",
    "check_file",
    "default_cache_dir",
    "download_file",
    "file_lock",
    "hash_prefix_of",
    "resolve_cache_dir",
]

CACHE_DIR_ENV = "NONLOCALNET_CACHE_DIR"
_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")  # torchvision's resnet50-0676ba61.pth

log = logging.getLogger("nonlocalnet.download")


class DownloadError(NonLocalNetError, OSError):
    """A file could not be downloaded; the message names the URL and where to put it by hand."""


class ChecksumError(NonLocalNetError, ValueError):
    """A file's SHA-256 is not the published one; the file was not kept (or not used)."""


def default_cache_dir() -> Path:
    """``$NONLOCALNET_CACHE_DIR``, else ``torch.hub``'s checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def hash_prefix_of(file_name: str) -> str | None:
    """The SHA-256 prefix torchvision writes into its file names (``resnet50-0676ba61.pth`` ->
    ``0676ba61``), or ``None``."""
    m = _HASH_IN_NAME.search(file_name)
    return m.group(1) if m else None


def _check_digest(digest: str, sha256: str | None, hash_prefix: str | None, what: str) -> None:
    if sha256 is not None and digest != sha256.lower():
        raise ChecksumError(f"{what}: SHA-256 is {digest}, expected {sha256.lower()}")
    if hash_prefix is not None and not digest.startswith(hash_prefix.lower()):
        raise ChecksumError(
            f"{what}: SHA-256 is {digest}, expected one starting with {hash_prefix.lower()} "
            "(the prefix in the published file name)"
        )


def check_file(path: str | os.PathLike, *, sha256: str | None = None, hash_prefix: str | None = None) -> str:
    """Hash ``path`` and compare with ``sha256`` (full hex digest) and/or ``hash_prefix``; returns
    the digest. A mismatch raises :class:`ChecksumError` naming the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _check_digest(digest, sha256, hash_prefix, str(path))
    return digest


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block; wait (and
    log that) while another process holds it. Without ``fcntl`` (Windows) no lock is taken: files
    are still renamed into place atomically, but two processes may both download."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        log.debug("no fcntl on this platform: %s is not locked", path)
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish with %s (lock %s)", path.stem, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _by_hand(url: str, path: Path) -> str:
    return (
        f"Download it by hand (e.g. wget {url}) and put it at {path}, or point {CACHE_DIR_ENV} "
        "(or cache_dir) at a folder that holds it."
    )


def download_file(
    url: str,
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``path`` unless ``path`` exists; returns ``path``.

    Under the lock ``<path>.lock`` (one download at a time; the others wait, then find the file),
    into ``<path>.<random>.tmp`` next to it, with a tqdm progress bar (``progress``). The length
    (``Content-Length``) and the SHA-256 (``sha256``, or ``hash_prefix``) are checked before the
    rename, so ``path`` only ever holds a complete, checked file. An HTTP or network error is a
    :class:`DownloadError` naming the URL and ``path`` (where to put the file by hand); a wrong
    hash a :class:`ChecksumError`; in both cases nothing is left under ``path``.
    """
    path = Path(path)
    if not isinstance(url, str) or not url:
        raise InvalidValueError(f"download_file: url must be a non-empty str, got {url!r}")
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():  # another process downloaded it while this one waited
            return path
        for stale in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
            log.info("removing %s, left by an interrupted download", stale)
            stale.unlink(missing_ok=True)
        _fetch(url, path, sha256=sha256, hash_prefix=hash_prefix, progress=progress, timeout=timeout)
    return path


def _fetch(
    url: str, path: Path, *, sha256: str | None, hash_prefix: str | None, progress: bool, timeout: float
) -> None:
    """Stream ``url`` into a temporary file next to ``path``; check it; rename it (atomic_write)."""

    def write(tmp: str) -> None:
        h = hashlib.sha256()
        received, total = 0, None
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "nonlocalnet"})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                log.info("downloading %s to %s", url, path)
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=path.name,
                    disable=not progress,
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"cannot download {url}: HTTP {err.code} {err.reason}. {_by_hand(url, path)}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            # offline, refused, reset, timed out, closed mid-file (http.client.IncompleteRead)
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            raise DownloadError(
                f"cannot download {url}: {reason} (after {received} bytes). {_by_hand(url, path)}"
            ) from err
        if total is not None and received != total:
            raise DownloadError(
                f"cannot download {url}: the connection ended after {received} of {total} bytes; "
                f"try again. {_by_hand(url, path)}"
            )
        _check_digest(h.hexdigest(), sha256, hash_prefix, f"the download of {url}")

    from tqdm.auto import tqdm

    atomic_write(path, write)
