"""Training checkpoints: written atomically, the last K kept plus the best, loaded without pickle
code execution (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nonlocalnet.atomic import atomic_write
from nonlocalnet.errors import InvalidValueError, MissingFileError, NonLocalNetError
from nonlocalnet.models.weights import load_failure

__all__ = [
    "RESUME_FREE_SETTINGS",
    "CheckpointManager",
    "CheckpointWriteError",
    "capture_rng_state",
    "changed_settings",
    "checkpoint_step",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

_NAME = re.compile(r"^iter_(\d{8})\.pt$")


class CheckpointWriteError(NonLocalNetError, OSError, RuntimeError):
    """A checkpoint could not be written (a full disk, a failed write); the message names the
    file, the cause, and the previous checkpoint, which the atomic write left intact. An
    ``OSError`` and, as ``torch.save``'s own failures were, a ``RuntimeError``."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, previous: Path | None = None) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file, fsync, rename). A failed
    write (e.g. a full disk, which ``torch.save`` reports as ``unexpected pos ...``) leaves
    ``path`` as it was and raises :class:`CheckpointWriteError`; ``previous``: the checkpoint
    the message names as the one to resume from."""
    try:
        return atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as err:
        raise CheckpointWriteError(_write_failure(Path(path), err, previous)) from err


def _write_failure(path: Path, err: BaseException, previous: Path | None) -> str:
    """Why writing ``path`` failed, in words, and what is still on disk."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    no_space = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in _chain(err))
    if no_space or (free is not None and free < 1 << 20):
        cause = f"the disk is full ({free} bytes free)" if free is not None else "the disk is full"
    else:
        cause = "the write failed"
    if previous is not None and previous.is_file():
        kept = f"the previous checkpoint {previous} is intact: free space and resume from it (--resume)"
    else:
        kept = "no earlier checkpoint of this run exists; nothing was overwritten"
    return f"could not write checkpoint {path}: {cause} ({type(err).__name__}: {err}); {kept}"


def _chain(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; tensors and plain data only."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise InvalidValueError(
            f"{path} is not a readable nonlocalnet checkpoint: {load_failure(path, err)}"
        ) from err
    if not isinstance(state, dict) or "model" not in state:
        raise InvalidValueError(f"{path} is not a nonlocalnet training checkpoint (no 'model' entry)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from (torch CPU/CUDA, Python, NumPy), as plain data."""
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [*internal, version, gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))


# Settings of the generic sections a resumed run may change without changing the weights it
# trains: where things go, logging, checkpointing, evaluation, data loading (a task adds its
# own: :attr:`~nonlocalnet.engine.task.Task.resume_free_settings`). ``section.*`` covers a
# whole section.
RESUME_FREE_SETTINGS = (
    "output_dir",
    "device",
    "data.num_workers",
    "data.bad_data_threshold",
    "train.log_every",
    "train.progress",
    "train.dist_timeout_s",
    "train.deterministic",
    "train.memory_format",
    "checkpoint.*",
    "eval.*",
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))  # an empty mapping adds no key
        else:
            out[name] = value
    return out


def changed_settings(
    saved: dict[str, Any],
    current: dict[str, Any],
    *,
    free: tuple[str, ...] = RESUME_FREE_SETTINGS,
    defaults: dict[str, Any] | None = None,
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every setting of two config dicts
    (``config_to_dict``) that differs, except those matched by ``free`` (``key`` or
    ``section.*``).

    A schema field missing from ``saved`` (a config written before the field existed) is compared
    at its value in ``defaults`` (``config_to_dict(Config())``): a field is added with the default
    that keeps the earlier behaviour, so that is what the saved run did. Without ``defaults``, or
    missing from ``current`` too (written by a newer version), it is not compared. Inside
    free-form mappings (``model.overrides``) a missing key is a change (``None`` on that side)."""
    if defaults is not None:
        saved = _with_missing_fields(saved, defaults)

    def is_free(key: str) -> bool:
        return any(key == f or (f.endswith(".*") and key.startswith(f[:-1])) for f in free)

    def schema_field(key: str) -> str:
        return ".".join(key.split(".")[:2])

    def schema_fields(tree: dict[str, Any]) -> set[str]:  # "seed", "train.batch_size", ...
        return {
            f"{top}.{key}" if isinstance(value, dict) else top
            for top, value in tree.items()
            for key in (value if isinstance(value, dict) else [None])
        }

    a, b = _flatten(saved), _flatten(current)
    fields_a, fields_b = schema_fields(saved), schema_fields(current)
    changes = []
    for key in sorted(a.keys() | b.keys()):
        if is_free(key):
            continue
        field = schema_field(key)
        if field not in fields_a or field not in fields_b:
            continue
        old, new = a.get(key), b.get(key)
        if old != new:
            changes.append((key, old, new))
    return changes


def _with_missing_fields(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with each schema field (``seed``, ``optim.lr``, ...) it lacks taken from ``defaults``."""
    out = dict(saved)
    for top, value in defaults.items():
        if top not in out:
            out[top] = value
        elif isinstance(value, dict) and isinstance(out[top], dict):
            out[top] = {**value, **out[top]}
    return out


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was taken at: from an ``iter_XXXXXXXX.pt`` name, else (``best.pt``)
    from its ``step`` entry (memory-mapped, nothing else read)."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match:
        return int(match.group(1))
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state["step"])


def _step_or_none(path: Path) -> int | None:
    """:func:`checkpoint_step`, or ``None`` for a file it cannot read (not a run's past)."""
    try:
        return checkpoint_step(path)
    except Exception:  # any unreadable or foreign file
        return None


class CheckpointManager:
    """``iter_XXXXXXXX.pt`` files in ``folder``: keeps the newest ``keep_last``; ``best.pt`` is
    replaced whenever the tracked metric improves.

    Rotation removes only checkpoints older than the one just written, so it never deletes
    a run's own new files in favour of higher-numbered ones. Files of another run or of a
    discarded future are moved out of the way by :meth:`set_aside` before a run starts.
    """

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise InvalidValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Numbered checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``iter_<step>.pt``, then delete all but the newest ``keep_last`` checkpoints up
        to ``step`` (later-numbered files are not this run's and are left alone)."""
        path = save_checkpoint(self.folder / f"iter_{step:08d}.pt", state, previous=self.latest())
        older = [p for p in self.checkpoints() if checkpoint_step(p) <= step]
        for old in older[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def set_aside(self, after: int | None = None) -> tuple[Path | None, list[Path]]:
        """Move the checkpoints taken after step ``after`` (all of them when ``None``), ``best.pt``
        included, into a new subfolder ``superseded-<UTC time>``, where nothing reads or deletes
        them. Returns the subfolder (``None`` when nothing moved) and the moved files' new paths.

        A run started in a used folder calls it with ``None``; a run resumed at step ``S`` with
        ``S``, so the checkpoints of the future it discards are neither resumed from nor left as
        the newest.
        """
        found = self.checkpoints()
        if self.best_path.is_file():
            found.append(self.best_path)
        if after is None:
            moving = found
        else:
            steps = [_step_or_none(p) for p in found]
            moving = [p for p, step in zip(found, steps, strict=True) if step is None or step > after]
        if not moving:
            return None, []
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target = self.folder / f"superseded-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.folder / f"superseded-{stamp}-{n}"
        target.mkdir(parents=True)
        moved = []
        for p in moving:
            moved.append(p.rename(target / p.name))
        return target, moved

    def save_best(self, state: dict[str, Any]) -> Path:
        previous = self.best_path if self.best_path.is_file() else None
        return save_checkpoint(self.best_path, state, previous=previous)
