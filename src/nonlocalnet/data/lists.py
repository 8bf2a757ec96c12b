"""Labelled video lists: list files (``path label`` lines or CSV), class-name files and
class-per-folder trees."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoSample",
    "class_folder_names",
    "read_class_names",
    "read_video_list",
    "scan_class_folders",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


@dataclass(frozen=True)
class VideoSample:
    """One labelled video file."""

    path: str
    label: int


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (surrounding spaces stripped, blank lines ignored); the line order
    gives the label index. A repeated name is an error."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise InvalidValueError(
                f"{path}:{lineno}: duplicate class name {name!r} (first on line {first_line[name]})"
            )
        first_line[name] = lineno
        names.append(name)
    if not names:
        raise InvalidValueError(f"{path}: no class names")
    return names


def _parse_label(text: str, class_names: Sequence[str] | None, lookup: dict[str, int], where: str) -> int:
    text = text.strip()
    if class_names is not None and text in lookup:
        return lookup[text]
    try:
        label = int(text)
    except ValueError:
        if class_names is None:
            raise InvalidValueError(
                f"{where}: label {text!r} is not an integer (pass class_names to use class-name labels)"
            ) from None
        raise InvalidValueError(
            f"{where}: unknown class name {text!r} ({len(class_names)} classes)"
        ) from None
    if label < 0 or (class_names is not None and label >= len(class_names)):
        bound = f"[0, {len(class_names) - 1}]" if class_names is not None else ">= 0"
        raise InvalidValueError(f"{where}: label {label} out of range (expected {bound})")
    return label


def read_video_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> list[VideoSample]:
    """Samples from a Kinetics/PySlowFast list file.

    Each non-blank line is ``path label`` (whitespace separated; the path may contain spaces, the
    label is the last field) or, when the first line contains a comma, CSV ``path,label`` with an
    optional header ``path,label`` (a header may name more columns; ``path`` and ``label`` are
    picked by name). A label is a class index, or a class name when ``class_names`` is given.
    Relative paths are resolved against ``root`` (default: the list file's folder). Errors name
    the file and line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    lookup = {name: i for i, name in enumerate(class_names)} if class_names is not None else {}
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        return []
    is_csv = "," in lines[0][1]
    rows = [
        (n, [f.strip() for f in (next(csv.reader([line])) if is_csv else line.strip().rsplit(maxsplit=1))])
        for n, line in lines
    ]
    header = [f.lower() for f in rows[0][1]]
    columns, has_header = (0, 1), "path" in header and "label" in header
    if has_header:
        columns = (header.index("path"), header.index("label"))
        rows = rows[1:]
    samples = []
    for lineno, fields in rows:
        where = f"{path}:{lineno}"
        if not has_header and len(fields) > 2:
            raise InvalidValueError(
                f"{where}: {len(fields)} columns without a header line naming 'path,label'"
            )
        if len(fields) <= max(columns) or not fields[columns[0]] or not fields[columns[1]]:
            expected = "'path,label'" if is_csv else "'path label'"
            raise InvalidValueError(f"{where}: missing column (expected {expected}, got {fields!r})")
        label = _parse_label(fields[columns[1]], class_names, lookup, where)
        samples.append(VideoSample(str(base / fields[columns[0]]), label))
    return samples


def class_folder_names(root: str | os.PathLike) -> list[str]:
    """The class folders of a class-per-folder tree: the non-hidden sub-folders of ``root``,
    sorted by name (the order :func:`scan_class_folders` labels them in without a class list)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InvalidValueError(f"{root}: no class folders")
    return classes


def scan_class_folders(
    root: str | os.PathLike,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    *,
    class_names: Sequence[str] | None = None,
) -> tuple[list[VideoSample], list[str]]:
    """A class-per-folder tree ``root/<class>/**/<video>``: every non-hidden sub-folder of ``root``
    is a class; videos are the files under it whose suffix is in ``extensions``
    (case-insensitive), sorted by path. Returns ``(samples, class_names)``.

    Labels: a folder's index in ``class_names`` when given (the training split's class list, so
    every split of a data set agrees; a folder not in it is an error, a listed class without a
    folder is fine), else its index among the tree's folders sorted by name.
    """
    root = Path(root)
    exts = tuple(e.lower() for e in extensions)
    classes = class_folder_names(root)
    if class_names is None:
        labels = {name: i for i, name in enumerate(classes)}
    else:
        labels = {name: i for i, name in enumerate(class_names)}
        if len(labels) != len(class_names):
            raise InvalidValueError(f"class_names: repeated class names in {list(class_names)!r}")
        unknown = [name for name in classes if name not in labels]
        if unknown:
            raise InvalidValueError(
                f"{root}: class folder(s) {', '.join(map(repr, unknown))} not in the class list "
                f"({len(labels)} classes: {_preview(list(labels))})"
            )
    samples = []
    for name in classes:
        label = labels[name]
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
        )
        samples += [VideoSample(str(p), label) for p in files]
    if not samples:
        raise InvalidValueError(
            f"{root}: no videos with extensions {list(exts)} in {len(classes)} class folders"
        )
    return samples, classes if class_names is None else list(class_names)


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
