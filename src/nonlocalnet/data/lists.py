"""Labelled video lists: list files (mmaction2/PySlowFast ``path label`` lines, raw-frame lists,
CSV with a header, the official Kinetics CSVs), class-name files and class-per-folder trees."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nonlocalnet.data.kinetics import KineticsRow, VideoIndex, clip_file_stem, kinetics_folders
from nonlocalnet.errors import InvalidValueError, MissingFileError

__all__ = [
    "LABEL_COLUMNS",
    "PATH_COLUMNS",
    "VIDEO_EXTENSIONS",
    "MissingVideo",
    "SkippedFile",
    "VideoList",
    "VideoSample",
    "class_folder_names",
    "read_class_names",
    "read_video_list",
    "scan_class_folders",
]

# containers FFmpeg (PyAV) demuxes; matched case-insensitively
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".f4v", ".mj2",
    ".mkv", ".webm", ".avi", ".divx", ".flv", ".wmv", ".asf",
    ".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".m2t",
    ".ogv", ".mxf", ".dv", ".nut", ".y4m", ".rm", ".rmvb", ".ivf",
)  # fmt: skip
# header names of a CSV's path and label columns (the first present is used)
PATH_COLUMNS = ("path", "video", "filename", "file", "video_path", "filepath", "file_path")
LABEL_COLUMNS = ("label", "class", "category", "label_id", "class_id")


@dataclass(frozen=True)
class VideoSample:
    """One labelled video: a file, or a folder of frame images (``num_frames`` set: the count
    its raw-frame list line gives). ``start``/``end`` (seconds from the first frame): only that
    window of the file is used (a Kinetics clip kept inside its whole YouTube video)."""

    path: str
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None


@dataclass(frozen=True)
class MissingVideo:
    """A list line whose video was found under no name it may have: ``index`` of its sample
    (whose path is the first name looked for), ``where`` (``file:line``), ``looked_for``."""

    index: int
    where: str
    looked_for: str


@dataclass(frozen=True)
class SkippedFile:
    """A file a folder scan did not take as a video, and why."""

    path: str
    reason: str


@dataclass
class VideoList:
    """What a list file or folder tree holds. ``class_names``: the given class list, the tree's
    folders, or the list's class-name labels sorted (``None``: integer labels and no names);
    ``format``: what was read; ``missing``: samples whose video is not there (Kinetics rows);
    ``skipped``: files of a folder tree that are not videos."""

    samples: list[VideoSample]
    class_names: list[str] | None
    format: str
    missing: list[MissingVideo] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (surrounding spaces stripped, blank lines ignored); the line order
    gives the label index. A repeated name is an error."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
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


_INT = re.compile(r"[+-]?\d+")
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')  # a double-quoted field, or a run of non-spaces
_NAMES_HINT = "set data.class_names=FILE (one class name per line, in label order)"


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    label: str
    num_frames: int | None = None


def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _labels(
    rows: Sequence[tuple[str, str]], class_names: Sequence[str] | None
) -> tuple[list[int], list[str] | None]:
    """Label indices of ``(where, text)`` rows and the class list: ``class_names`` (a label is a
    name in it or an index), else integer labels (no names), else class-name labels, numbered
    in sorted order (as the authors' Kinetics ``classids.json`` numbers them)."""
    if class_names is not None:
        lookup = {name: i for i, name in enumerate(class_names)}
        return [_parse_label(text, class_names, lookup, where) for where, text in rows], list(class_names)
    is_int = [bool(_INT.fullmatch(text)) for _, text in rows]
    if any(v != is_int[0] for v in is_int):
        first = next(i for i, v in enumerate(is_int) if v != is_int[0])
        (w0, t0), (w1, t1) = rows[0], rows[first]
        name, where, other = (
            (t1, w1, f"{w0} has the integer label {t0}")
            if is_int[0]
            else (t0, w0, f"{w1} has the integer label {t1}")
        )
        raise InvalidValueError(
            f"{where}: label {name!r} is not an integer, but {other}: write class names or class "
            f"indices, not both, or {_NAMES_HINT}"
        )
    if rows and not is_int[0]:
        names = sorted({text for _, text in rows})
        lookup = {name: i for i, name in enumerate(names)}
        return [lookup[text] for _, text in rows], names
    return [_parse_label(text, None, {}, where) for where, text in rows], None


def _parse_label(text: str, class_names: Sequence[str] | None, lookup: dict[str, int], where: str) -> int:
    text = text.strip()
    if class_names is not None and text in lookup:
        return lookup[text]
    if not _INT.fullmatch(text):
        raise InvalidValueError(
            f"{where}: unknown class name {text!r} ({len(class_names or ())} classes: "
            f"{_preview(list(class_names or ()), 5)})"
        )
    label = int(text)
    if label < 0 or (class_names is not None and label >= len(class_names)):
        bound = f"[0, {len(class_names) - 1}]" if class_names is not None else ">= 0"
        raise InvalidValueError(f"{where}: label {label} out of range (expected {bound})")
    return label


def read_video_list(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> VideoList:
    """The samples of a list file, its format decided from the whole file:

    - CSV with a header naming a path column (one of :data:`PATH_COLUMNS`: ``path``, ``video``,
      ``filename``, ...) and a label column (:data:`LABEL_COLUMNS`: ``label``, ``class``, ...);
      other columns are ignored; quoted fields as the ``csv`` module reads them.
    - The official Kinetics-400/600/700 CSVs (``label,youtube_id,time_start,time_end,split``):
      each row's video is looked up under ``root`` as :mod:`nonlocalnet.data.kinetics` says; a
      whole YouTube video is read only within ``[time_start, time_end]``; rows whose video is
      not found are listed in ``missing`` (their sample's path is the clip name looked for).
      The test split's CSV has no labels: an error.
    - ``path label`` lines (mmaction2, PySlowFast, the authors' lists): the label is the last
      field, the path everything before it (spaces included). A field with spaces may be
      written in double quotes (``clips/a.mp4 "air drumming"``).
    - mmaction2 raw-frame lists, ``dir n_frames label``: every line ends in two integers and no
      path is a video file. Multi-label lines (``path l1 l2 ...``) are an error: training takes
      one label per video.
    - CSV without a header, ``path,label``.

    A line with both a comma and spaces is read as whichever of ``path label`` and
    ``path,label`` gives every line a known label (an integer, or a name in ``class_names``) and
    then a video path; if both readings fit equally, add a header line ``path,label``. A UTF-8
    BOM is ignored. Labels: class indices, or class names: names in ``class_names`` when given,
    else numbered in sorted order (the returned ``class_names``). Relative paths are resolved
    against ``root`` (default: the list file's folder). Errors name the file and line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    text = path.read_text(encoding="utf-8-sig")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return VideoList([], list(class_names) if class_names is not None else None, "empty")
    header = [f.strip().lower() for f in next(csv.reader([lines[0][1]]))]
    if len(header) >= 2 and any(c in header for c in (*PATH_COLUMNS, "youtube_id")):
        if "youtube_id" in header and not any(c in PATH_COLUMNS for c in header):
            return _read_kinetics(path, lines, header, base, class_names)
        fmt, rows = "CSV with a header", _csv_rows(path, lines[1:], header)
    elif (
        len(tokens := lines[0][1].lower().split()) == 2
        and tokens[0] in PATH_COLUMNS
        and tokens[1] in LABEL_COLUMNS
    ):
        fmt, rows = _space_rows(path, lines[1:])
    elif _is_csv(path, lines, class_names):
        fmt, rows = "CSV path,label", _csv_rows(path, lines, None)
    else:
        fmt, rows = _space_rows(path, lines)
    labels, names = _labels([(f"{path}:{r.line}", r.label) for r in rows], class_names)
    samples = [
        VideoSample(str(base / r.path), y, num_frames=r.num_frames) for r, y in zip(rows, labels, strict=True)
    ]
    return VideoList(samples, names, fmt)


def _is_csv(path: Path, lines: list[tuple[int, str]], class_names: Sequence[str] | None) -> bool:
    """Whether a headerless file is ``path,label`` CSV rather than ``path label`` lines."""
    fields = [next(csv.reader([line])) for _, line in lines]
    tokens = [_TOKEN.findall(line) for _, line in lines]
    csv_ok, space_ok = all(len(f) >= 2 for f in fields), all(len(t) >= 2 for t in tokens)
    if csv_ok != space_ok:
        return csv_ok
    if not csv_ok:  # neither fits every line: the first line's form reports the bad one
        return len(fields[0]) >= 2
    names = set(class_names or ())

    def known(label: str) -> bool:
        return bool(_INT.fullmatch(label.strip())) or label.strip() in names

    last = [list(_TOKEN.finditer(line))[-1] for _, line in lines]
    space_rows = [
        (_unquote(line[: m.start()]), _token_text(m)) for (_, line), m in zip(lines, last, strict=True)
    ]
    as_csv = (all(len(f) == 2 and known(f[1]) for f in fields), all(_is_video(f[0].strip()) for f in fields))
    as_space = (all(known(label) for _, label in space_rows), all(_is_video(p) for p, _ in space_rows))
    if as_csv == as_space:
        raise InvalidValueError(
            f"{path}: every line has both a comma and a space, and both 'path,label' (CSV) and "
            "'path label' read it alike: add a header line 'path,label' for CSV, or quote the paths "
            f'("a,b.mp4" 3) for a space-separated list, or {_NAMES_HINT}'
        )
    return as_csv > as_space


def _csv_rows(path: Path, lines: list[tuple[int, str]], header: list[str] | None) -> list[_Row]:
    columns = (0, 1)
    if header is not None:
        label = next((c for c in LABEL_COLUMNS if c in header), None)
        if label is None:
            raise InvalidValueError(
                f"{path}:{lines[0][0] - 1}: the header ({','.join(header)}) names no label column "
                f"(one of {', '.join(LABEL_COLUMNS)})"
            )
        columns = (header.index(next(c for c in PATH_COLUMNS if c in header)), header.index(label))
    rows = []
    for lineno, line in lines:
        where = f"{path}:{lineno}"
        fields = [f.strip() for f in next(csv.reader([line]))]
        if header is None and len(fields) > 2:
            raise InvalidValueError(
                f"{where}: {len(fields)} columns without a header line naming them (e.g. 'path,label', "
                "or the Kinetics header 'label,youtube_id,time_start,time_end,split')"
            )
        if len(fields) <= max(columns) or not fields[columns[0]] or not fields[columns[1]]:
            raise InvalidValueError(f"{where}: missing column (expected 'path,label', got {fields!r})")
        rows.append(_Row(lineno, fields[columns[0]], fields[columns[1]]))
    return rows


def _token_text(match: re.Match) -> str:
    """A :data:`_TOKEN` match's text, without its quotes."""
    return match.group(1) if match.group(1) is not None else match.group(2)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        return text[1:-1]
    return text


def _space_rows(path: Path, lines: list[tuple[int, str]]) -> tuple[str, list[_Row]]:
    """``path label`` lines, or raw-frame ``dir n_frames label`` lines (decided over all lines)."""
    parsed = []
    for lineno, line in lines:
        tokens = list(_TOKEN.finditer(line))
        if len(tokens) < 2:
            raise InvalidValueError(
                f"{path}:{lineno}: missing column (expected 'path label', got {line.strip()!r})"
            )
        k = 0  # trailing unquoted integers (the label, a raw frame count, more labels)
        while k < len(tokens) - 1 and tokens[-1 - k].group(2) and _INT.fullmatch(tokens[-1 - k].group(2)):
            k += 1
        parsed.append((lineno, line, tokens, k, _unquote(line[: tokens[-k].start()]) if k else ""))
    frames = all(k >= 2 for *_, k, _ in parsed) and not any(_is_video(head) for *_, head in parsed)
    rows = []
    for lineno, line, tokens, k, head in parsed:
        where = f"{path}:{lineno}"
        n_labels = k - 1 if frames else k  # a raw-frame line's first number is its frame count
        numbers = " ".join(t.group(0) for t in tokens[len(tokens) - n_labels :]) if k else ""
        if (frames and k > 2) or (not frames and k >= 2 and _is_video(head)):
            raise InvalidValueError(
                f"{where}: {n_labels} labels ({numbers}) after {head!r}: multi-label lists "
                "(mmaction2's 'path label1 label2 ...') are not supported yet, training takes one label "
                "per video; keep one label per line"
            )
        if not frames and k >= 2:
            raise InvalidValueError(
                f"{where}: {k} numbers ({numbers}) after {head!r} in a list of videos: a raw-frame line "
                "('dir n_frames label') among video lines, or several labels; if the numbers are part "
                "of the path, quote it"
            )
        label = _token_text(tokens[-1])
        if not label:
            raise InvalidValueError(f"{where}: empty label (expected 'path label', got {line.strip()!r})")
        if frames:
            rows.append(_Row(lineno, _unquote(line[: tokens[-2].start()]), label, int(tokens[-2].group(2))))
            continue
        words = [t.group(0) for t in tokens[:-1]]
        cut = next((i for i, w in enumerate(words[:-1]) if _is_video(w)), None)
        if cut is not None and not _is_video(words[-1]):
            rest = " ".join([*words[cut + 1 :], label])
            raise InvalidValueError(
                f"{where}: the path seems to end at {words[cut]!r}, leaving {rest!r}: write a class "
                f'name with spaces in quotes ({words[cut]} "{rest}")'
            )
        rows.append(_Row(lineno, _unquote(line[: tokens[-1].start()]), label))
    return ("raw frames 'dir n_frames label'" if frames else "'path label' lines"), rows


def _read_kinetics(
    path: Path,
    lines: list[tuple[int, str]],
    header: list[str],
    base: Path,
    class_names: Sequence[str] | None,
) -> VideoList:
    """An official Kinetics CSV (module :mod:`nonlocalnet.data.kinetics`)."""
    if "label" not in header:
        raise InvalidValueError(
            f"{path}:{lines[0][0]}: no 'label' column (header {','.join(header)}): the Kinetics test "
            "split is distributed without labels, so it can be neither trained nor evaluated on; "
            "evaluate on the validation CSV (e.g. kinetics-400_val.csv)"
        )
    col = {
        name: header.index(name)
        for name in ("label", "youtube_id", "time_start", "time_end", "split")
        if name in header
    }
    timed = "time_start" in col and "time_end" in col
    index = VideoIndex(base, VIDEO_EXTENSIONS)
    rows: list[tuple[str, KineticsRow]] = []
    for lineno, line in lines[1:]:
        where = f"{path}:{lineno}"
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) < len(header) or not fields[col["label"]] or not fields[col["youtube_id"]]:
            raise InvalidValueError(f"{where}: missing column (expected {','.join(header)}, got {fields!r})")
        times = []
        for name in ("time_start", "time_end") if timed else ():
            try:
                times.append(float(fields[col[name]]))
            except ValueError:
                raise InvalidValueError(f"{where}: {name} {fields[col[name]]!r} is not a number") from None
        if timed and not 0 <= times[0] < times[1]:
            raise InvalidValueError(f"{where}: time_start {times[0]} must be >= 0 and < time_end {times[1]}")
        start, end = times or (0.0, 0.0)
        split = fields[col["split"]] if "split" in col else ""
        rows.append((where, KineticsRow(fields[col["label"]], fields[col["youtube_id"]], start, end, split)))
    labels, names = _labels([(where, row.label or "") for where, row in rows], class_names)
    samples, missing = [], []
    for (where, row), label in zip(rows, labels, strict=True):
        folders = kinetics_folders(row)
        stem = clip_file_stem(row.youtube_id, row.time_start, row.time_end) if timed else row.youtube_id
        found = index.find(stem, folders)
        if found is not None:
            samples.append(VideoSample(str(found), label))
            continue
        whole = index.find(row.youtube_id, folders) if timed else None
        if whole is not None:
            samples.append(VideoSample(str(whole), label, start=row.time_start, end=row.time_end))
            continue
        looked_for = f"{stem}.<ext>" + (f" or {row.youtube_id}.<ext>" if timed else "")
        missing.append(MissingVideo(len(samples), where, looked_for))
        samples.append(VideoSample(str(base / f"{stem}.mp4"), label))
    return VideoList(samples, names, "Kinetics CSV", missing=missing)


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
) -> VideoList:
    """A class-per-folder tree ``root/<class>/**/<video>``: every non-hidden sub-folder of ``root``
    is a class; videos are the files under it whose suffix is in ``extensions``
    (case-insensitive: ``.MP4`` too), sorted by path. Everything else is listed in ``skipped``
    with the reason: other extensions, hidden files and folders (``.name``), files outside the
    class folders.

    Labels: a folder's index in ``class_names`` when given (the training split's class list, so
    every split of a data set agrees; a folder not in it is an error, a listed class without a
    folder is fine), else its index among the tree's folders sorted by name (the returned
    ``class_names``).
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
    skipped = [
        SkippedFile(str(p), "hidden folder" if p.is_dir() else "file outside the class folders")
        for p in sorted(root.iterdir())
        if p.name.startswith(".") or not p.is_dir()
    ]
    samples = []
    for name in classes:
        found = _videos_under(root / name, exts, skipped)
        samples += [VideoSample(p, labels[name]) for p in sorted(found)]
    if not samples:
        raise InvalidValueError(
            f"{root}: no videos in {len(classes)} class folders ({len(skipped)} other files; "
            f"video extensions: {' '.join(exts)})"
        )
    skipped.sort(key=lambda s: s.path)
    return VideoList(
        samples, classes if class_names is None else list(class_names), "class folders", skipped=skipped
    )


def _videos_under(folder: Path, exts: tuple[str, ...], skipped: list[SkippedFile]) -> list[str]:
    """The files under ``folder`` with a suffix in ``exts`` (lower case); hidden files and folders
    and other files are added to ``skipped``."""
    found = []
    for current, dirs, files in os.walk(folder):
        hidden = [d for d in sorted(dirs) if d[0] == "."]
        skipped += [SkippedFile(os.path.join(current, d), "hidden folder") for d in hidden]
        dirs[:] = sorted(d for d in dirs if d[0] != ".")
        for f in files:
            p = os.path.join(current, f)
            suffix = os.path.splitext(f)[1].lower()
            if f.startswith("."):
                skipped.append(SkippedFile(p, "hidden file"))
            elif suffix not in exts:
                skipped.append(SkippedFile(p, f"not a video extension ({suffix or 'none'})"))
            else:
                found.append(p)
    return found


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
