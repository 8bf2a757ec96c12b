"""The run's metrics: JSON lines (``metrics.jsonl``), TensorBoard when installed, PNG curves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from nonlocalnet.errors import InvalidValueError

__all__ = ["RunLog", "read_jsonl"]

log = logging.getLogger("nonlocalnet.train")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (killed writer) is ignored."""
    records = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise InvalidValueError(f"{path}:{number}: not a JSON record: {line[:80]!r}") from None
    return records


class RunLog:
    """Appends one JSON record per line (flushed, so a killed run keeps what it logged).

    ``truncate_after``: on resume, drop records of steps after the checkpoint (they belong to
    the interrupted run and will be logged again). Only the main process writes (``enabled``).
    """

    def __init__(
        self, folder: str | Path, *, enabled: bool = True, truncate_after: int | None = None
    ) -> None:
        self.path = Path(folder) / "metrics.jsonl"
        self.enabled = enabled
        self.last_val: dict[str, Any] | None = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= truncate_after]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif truncate_after is None:
            self.path.write_text("")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "val":
            self.last_val = record
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'run')}/{key}", value, record["step"])
        if record.get("kind") == "val":
            shown = {k: v for k, v in record.items() if "top" in k or k.endswith("_AP")}
            log.info("step %d: %s", record["step"], shown)

    def plot(self, title: str = "") -> Path | None:
        """Write ``curves.png`` from the whole log."""
        if not self.enabled:
            return None
        from nonlocalnet.viz import plot_training_curves  # matplotlib only when a figure is drawn

        return plot_training_curves(read_jsonl(self.path), self.path.parent / "curves.png", title=title)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
