"""Kinetics-400/600/700 as distributed: the official annotation CSVs
(``label,youtube_id,time_start,time_end,split``, Kinetics-700 also ``is_cc``) and the files the
common download scripts write for them.

The ActivityNet crawler (``Crawler/Kinetics/download.py``) and the CVDF tarballs name a clip
``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, flat or in one folder per class (the
label as is, or with spaces replaced by ``_`` as the authors' ``gen_py_list.py`` and mmaction2
do), optionally under a folder named by the CSV's ``split``. A copy that kept whole YouTube
videos (``{youtube_id}.<ext>``) is read only within ``[time_start, time_end]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KineticsRow", "VideoIndex", "clip_file_stem", "kinetics_folders"]


@dataclass(frozen=True)
class KineticsRow:
    """One annotation: ``label`` (``None`` in the test split's CSV), the YouTube id, the clip's
    window in seconds of the YouTube video and the ``split`` column (``""`` when absent)."""

    label: str | None
    youtube_id: str
    time_start: float
    time_end: float
    split: str = ""


def clip_file_stem(youtube_id: str, time_start: float, time_end: float) -> str:
    """``{youtube_id}_{time_start:06d}_{time_end:06d}``: the download scripts' name (the times
    truncated to whole seconds, as their ``'%06d' % t`` does)."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def kinetics_folders(row: KineticsRow) -> list[str]:
    """The folders (relative to the data root, ``""`` the root itself) a row's video may be in,
    in the order they are searched: the root, the split's folder, the class folder (label as is,
    then with ``_`` for spaces), the class folder under the split's folder."""
    classes = [row.label, row.label.replace(" ", "_")] if row.label else []
    split = [row.split] if row.split else []
    folders = ["", *split, *classes, *(f"{s}/{c}" for s in split for c in classes)]
    return list(dict.fromkeys(folders))


class VideoIndex:
    """The video files under ``root`` down to two folders deep (hidden ones skipped), by folder
    and file stem; several extensions of one stem: the first in ``extensions`` wins. Built with
    one directory listing per folder (a Kinetics copy holds hundreds of thousands of files)."""

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str], *, depth: int = 2) -> None:
        self.root = Path(root)
        rank = {e.lower(): i for i, e in enumerate(extensions)}
        self._files: dict[str, dict[str, tuple[int, str]]] = {}
        pending = [("", self.root, 0)]
        while pending:
            rel, folder, level = pending.pop()
            stems: dict[str, tuple[int, str]] = {}
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if level < depth:
                        pending.append(
                            (f"{rel}/{entry.name}" if rel else entry.name, Path(entry.path), level + 1)
                        )
                    continue
                stem, ext = os.path.splitext(entry.name)
                r = rank.get(ext.lower())
                if r is not None and (stem not in stems or r < stems[stem][0]):
                    stems[stem] = (r, entry.name)
            self._files[rel] = stems

    def find(self, stem: str, folders: Sequence[str]) -> Path | None:
        """The first video named ``stem`` (any extension) in ``folders``, in order."""
        for rel in folders:
            hit = self._files.get(rel, {}).get(stem)
            if hit is not None:
                return self.root / rel / hit[1] if rel else self.root / hit[1]
        return None
