"""The demo's results table (Markdown and JSON, in the style of the paper's Table 2) and the
combined training-curve figure."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nonlocalnet.engine import read_jsonl

__all__ = ["summarise", "write_curves", "write_table"]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model from per-seed run records (``key``, ``label``, ``seed``, ``accuracy``,
    ``seconds``, ``params``, ``gflops``, ``nonlocal``): mean, spread (sample std; 0 for one
    seed), min and max of the held-out video accuracy, mean train time."""
    rows = []
    for key in dict.fromkeys(r["key"] for r in runs):
        mine = [r for r in runs if r["key"] == key]
        acc = [r["accuracy"] for r in mine]
        rows.append(
            {
                "key": key,
                "label": mine[0]["label"],
                **({"arch": mine[0]["arch"]} if "arch" in mine[0] else {}),
                "nonlocal": mine[0]["nonlocal"],
                "params": mine[0]["params"],
                "gflops": mine[0]["gflops"],
                "seeds": [r["seed"] for r in mine],
                "accuracy": acc,
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "accuracy_min": min(acc),
                "accuracy_max": max(acc),
                "train_seconds": statistics.fmean(r["seconds"] for r in mine),
            }
        )
    return rows


def write_table(rows: list[dict[str, Any]], folder: Path, header: dict[str, Any]) -> str:
    """Write ``results.md`` and ``results.json``; returns the Markdown table."""
    table = render_table(rows)
    notes = "\n".join(f"- {k}: {v}" for k, v in header.items())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(f"# nonlocalnet demo\n\n{notes}\n\n{table}\n")
    (folder / "results.json").write_text(json.dumps({**header, "rows": rows}, indent=2))
    return table


def _baseline(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row ``row`` is compared with: the model of its architecture without a block (C2D for
    C2D + NL, I3D for I3D + NL), else the first row."""
    if "arch" in row:
        for r in rows:
            if r.get("arch") == row["arch"] and r["nonlocal"] == 0:
                return r
    return rows[0]


def render_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`summarise`'s rows: each compared with its own baseline (the
    same architecture without a block; the first row for rows that do not say theirs)."""
    lines = [
        "| model | NL blocks | params | GFLOPs | held-out video top-1 (%) | per seed | vs baseline "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f" ± {100 * r['accuracy_std']:.1f}" if len(r["seeds"]) > 1 else ""
        base = _baseline(r, rows)
        versus = "-" if base is r else f"{100 * (r['accuracy_mean'] - base['accuracy_mean']):+.1f}"
        seeds = ", ".join(f"{100 * a:.1f}" for a in r["accuracy"])
        lines.append(
            f"| {r['label']} | {r['nonlocal']} | {r['params'] / 1e3:.1f}k | {r['gflops']:.4f} | "
            f"{100 * r['accuracy_mean']:.1f}{spread} | {seeds} | {versus} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_curves(run_dirs: dict[str, Path], labels: dict[str, str], path: Path) -> Path:
    """Training loss and training clip accuracy against the step, one line per model."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, folder in run_dirs.items():
        train = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == "train"]
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], label=labels[key])
        ax_acc.plot(steps, [100 * r["top1"] for r in train], label=labels[key])
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss (seed 0)")
    ax_acc.set(xlabel="step", ylabel="training clip top-1 (%)", title="training accuracy (seed 0)")
    ax_acc.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
