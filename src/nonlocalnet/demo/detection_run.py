"""``nonlocalnet detect-demo``: the built-in detection task ("whose key is it?",
:mod:`nonlocalnet.demo.detection_data`), Mask R-CNN (and Keypoint R-CNN) with and without the
paper's non-local block trained on it by the real engine, and a table in the style of the
paper's Table 5 (held-out COCOeval numbers over seeds), training curves and an attention figure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import statistics
import time
import typing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from nonlocalnet.demo.detection_attention import attention_study, key_swap_study
from nonlocalnet.demo.detection_data import KEYPOINT_OKS_SIGMAS, CocoSplit, context_shapes_splits
from nonlocalnet.demo.recipe import DetectionDemoConfig, detection_recipe, recipe_settings, run_config
from nonlocalnet.demo.run import DemoRun, seeds_and_jobs, train_all
from nonlocalnet.engine import ProgressBar, read_jsonl, train
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.tasks import DetectionTaskConfig

__all__ = [
    "DETECTION_DEMO_MODELS",
    "DetectionDemoResult",
    "detection_demo_config",
    "run_detection_demo",
]

log = logging.getLogger("nonlocalnet.demo")

DETECTION_DEMO_MODELS: dict[str, str] = {
    "maskrcnn_tiny_fpn": "Mask R-CNN",
    "maskrcnn_tiny_fpn_nl": "Mask R-CNN + 1 NL",
    "keypointrcnn_tiny_fpn": "Keypoint R-CNN",
    "keypointrcnn_tiny_fpn_nl": "Keypoint R-CNN + 1 NL",
}
"""The demo's detectors (registry name -> row label): a tiny ResNet-FPN whose layer3 features
see about +-40 px, with and without one block after ``layer3.0`` (the paper's place: before the
last block of res4)."""

_BASELINES = {
    "maskrcnn_tiny_fpn_nl": "maskrcnn_tiny_fpn",
    "keypointrcnn_tiny_fpn_nl": "keypointrcnn_tiny_fpn",
}
_COLUMNS = (
    ("box", "AP"),
    ("box", "AP50"),
    ("box", "AP75"),
    ("mask", "AP"),
    ("mask", "AP50"),
    ("mask", "AP75"),
)


def detection_demo_config(
    model: str,
    splits: dict[str, CocoSplit],
    recipe: DetectionDemoConfig,
    seed: int,
    output: Path,
    *,
    evaluate_on: str = "val",
) -> DetectionTaskConfig:
    """The training config of one demo run (:func:`~nonlocalnet.demo.recipe.run_config`): the
    recipe's, with the run's folder, seed and detector, the generated images' files and size, the
    keypoints' OKS sigmas, and the warm-up capped at one epoch's steps - 1."""
    size = recipe.demo.context_shapes().image_size
    steps_per_epoch = recipe.demo.num_train // recipe.train.batch_size
    cfg = run_config(
        recipe,
        {
            "output_dir": str(output),
            "seed": seed,
            "detection": {
                "model": model,
                "min_size": [size],
                "max_size": size,
                "train_images": str(splits["train"].images),
                "train_annotations": str(splits["train"].annotations),
                "val_images": str(splits[evaluate_on].images),
                "val_annotations": str(splits[evaluate_on].annotations),
                "oks_sigmas": list(KEYPOINT_OKS_SIGMAS),
            },
            "optim": {"warmup_iters": min(recipe.optim.warmup_iters, max(steps_per_epoch - 1, 0))},
        },
    )
    return typing.cast(DetectionTaskConfig, cfg)  # run_config builds the class of the recipe's task


def _train_runs(
    runs: list[DemoRun[str]],
    splits: dict[str, CocoSplit],
    recipe: DetectionDemoConfig,
    progress: bool,
    evaluate_on: str,
    *,
    position: int,
    threads: int | None,
) -> list[dict[str, Any]]:
    """Train ``runs`` one after another (in a worker process or this one); one record each."""
    if threads is not None:
        torch.set_num_threads(threads)
    records = []
    for run in runs:
        shutil.rmtree(run.folder, ignore_errors=True)  # the demo's own folders: a rerun replaces them
        cfg = detection_demo_config(run.model, splits, recipe, run.seed, run.folder, evaluate_on=evaluate_on)
        cfg.train.progress = progress
        label = f"{run.model} seed {run.seed}"
        result = train(cfg, progress=ProgressBar(label, position))
        final = result.final_eval or {}
        if progress:
            tqdm.write(
                f"{label}: held-out box AP {final.get('box_AP', float('nan')):.1f} ({result.seconds:.0f} s)"
            )
        records.append(
            {
                "model": run.model,
                "seed": run.seed,
                "seconds": result.seconds,
                **{k: v for k, v in final.items() if k.startswith(("box_", "mask_", "kp_"))},
            }
        )
    return records


def render_key_swap(key_swap: dict[str, list[dict[str, Any]]]) -> str:
    """Lines under the table: per model and seed, how often the label follows a swap of the key's
    colour (:func:`~nonlocalnet.demo.detection_attention.key_swap_study`); empty without one."""
    if not key_swap:
        return ""
    lines = ["", "The key's colour swapped, nothing else changed: the label should follow it (per seed)."]

    def pct(seeds: list[dict[str, Any]], key: str) -> str:
        return ", ".join(f"{100 * s[key]:.0f}%" for s in seeds)

    for model, seeds in key_swap.items():
        lines.append(
            f"- {DETECTION_DEMO_MODELS.get(model, model)}: label changed for {pct(seeds, 'changed')} of the "
            f"objects found; right before {pct(seeds, 'right')}, after {pct(seeds, 'right_swapped')}"
        )
    return "\n".join(lines)


def summarise_detection(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: mean and std over seeds of every COCOeval number, the per-seed box AP,
    and the gain over its baseline (the same detector without the block)."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        keys = [k for k in mine[0] if k.startswith(("box_", "mask_", "kp_"))]
        row: dict[str, Any] = {"model": model, "label": DETECTION_DEMO_MODELS.get(model, model)}
        for key in keys:
            values = [r[key] for r in mine]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["box_AP_per_seed"] = [r["box_AP"] for r in mine]
        row["seeds"] = len(mine)
        row["train_seconds"] = statistics.fmean(r["seconds"] for r in mine)
        rows.append(row)
    by_model = {r["model"]: r for r in rows}
    for row in rows:
        base = by_model.get(_BASELINES.get(row["model"], ""))
        if base is not None:
            row["box_AP_gain"] = row["box_AP"] - base["box_AP"]
            row["min_seed_margin"] = min(row["box_AP_per_seed"]) - max(base["box_AP_per_seed"])
    return rows


def render_detection_table(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 5 layout: box AP, AP50, AP75 and mask AP, AP50, AP75 (keypoint AP for
    keypoint models), mean ± std over seeds, with the per-seed box AP and the gain."""
    lines = [
        "| model | AP box | AP50 box | AP75 box | AP mask | AP50 mask | AP75 mask | AP kp "
        "| box AP per seed | gain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for kind, name in (*_COLUMNS, ("kp", "AP")):
            key = f"{kind}_{name}"
            cells.append(f"{r[key]:.1f} ± {r[key + '_std']:.1f}" if key in r else "")
        seeds = ", ".join(f"{v:.1f}" for v in r["box_AP_per_seed"])
        gain = f"{r['box_AP_gain']:+.1f}" if "box_AP_gain" in r else ""
        lines.append(f"| {r['label']} | {' | '.join(cells)} | {seeds} | {gain} |")
    return "\n".join(lines)


def write_detection_curves(run_dirs: dict[str, Path], path: Path) -> Path:
    """Training loss and its classification part against the step, one line per model (seed 0)."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_loss, ax_cls = fig.subplots(1, 2)
    for model, folder in run_dirs.items():
        train_log = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == "train"]
        steps = [r["step"] for r in train_log]
        label = DETECTION_DEMO_MODELS.get(model, model)
        ax_loss.plot(steps, [r["loss"] for r in train_log], label=label)
        ax_cls.plot(steps, [r["loss_classifier"] for r in train_log], label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (sum)", title="training loss (seed 0)")
    ax_cls.set(xlabel="step", ylabel="box classification loss", title="classification loss (seed 0)")
    ax_cls.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


@dataclass
class DetectionDemoResult:
    """Where everything went, the per-model rows, the attention study and the table."""

    output_dir: Path
    rows: list[dict[str, Any]]
    attention: dict[str, Any] | None
    table: str
    seconds: float


def _key_swaps(plan: list[DemoRun[str]], split: CocoSplit) -> dict[str, list[dict[str, Any]]]:
    """Every run's key-swap study (does its label follow the key?), per model in seed order."""
    key_swap: dict[str, list[dict[str, Any]]] = {}
    for p in plan:
        key_swap.setdefault(p.model, []).append(key_swap_study(p.folder, split))
    return key_swap


def _attention(run_dirs: dict[str, Path], split: CocoSplit, path: Path) -> dict[str, Any] | None:
    """The attention study of the first Mask R-CNN with a block (``None`` without one)."""
    nl_model = next((m for m in run_dirs if m.endswith("_nl") and m.startswith("maskrcnn")), None)
    return attention_study(run_dirs[nl_model], split, path) if nl_model else None


def run_detection_demo(
    output: str | Path = "runs/detect-demo",
    *,
    quick: bool = False,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    jobs: int | None = None,
    progress: bool = True,
    recipe: DetectionDemoConfig | str | os.PathLike[str] | None = None,
    tuning: bool = False,
) -> DetectionDemoResult:
    """Generate the task, train every model of the recipe on it for each seed, evaluate on the
    held-out split (``tuning``: the tuning split, to choose a recipe), and write ``results.md``/
    ``results.json``, ``curves.png``, ``attention.png`` and one folder per run. ``recipe`` (a
    :class:`~nonlocalnet.demo.recipe.DetectionDemoConfig`, a built-in recipe's name or a recipe
    file) replaces the built-in ``detection`` (``detection_quick`` with ``quick``); ``seeds``
    replaces its ``demo.seeds``."""
    started = time.perf_counter()
    source = ("detection_quick" if quick else "detection") if recipe is None else recipe
    recipe = source if isinstance(source, DetectionDemoConfig) else detection_recipe(source)
    demo = recipe.demo
    seeds, jobs = seeds_and_jobs(demo, seeds, jobs)
    if tuning and not demo.num_tuning:
        raise InvalidValueError("tuning=True needs a recipe with demo.num_tuning > 0")
    out = Path(output)
    splits = context_shapes_splits(
        Path(data_dir) if data_dir else out / "data",
        train=demo.num_train,
        val=demo.num_val,
        tuning=demo.num_tuning,
        seed=demo.data_seed,
        config=demo.context_shapes(),
    )
    evaluate_on = "tuning" if tuning else "val"
    plan = [DemoRun(m, s, out / "runs" / m / f"seed{s}") for s in range(seeds) for m in demo.models]
    fit = partial(_train_runs, splits=splits, recipe=recipe, progress=progress, evaluate_on=evaluate_on)
    runs = train_all(fit, plan, jobs)
    rows = summarise_detection(runs)
    run_dirs = {p.model: p.folder for p in plan if p.seed == 0}
    attention = _attention(run_dirs, splits[evaluate_on], out / "attention.png")
    key_swap = _key_swaps(plan, splits[evaluate_on])
    table = render_detection_table(rows) + render_key_swap(key_swap)
    header = {
        "task": "whose key is it? (docs/detection.md: the built-in task)",
        "data": dataclasses.asdict(demo.context_shapes()),
        "evaluated_on": evaluate_on,
        "recipe": recipe_settings(recipe),
        "seeds": seeds,
        "jobs": jobs,
        "attention": attention,
        "key_swap": key_swap,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**header, "rows": rows, "runs": runs}, indent=2))
    (out / "results.md").write_text(table + "\n")
    write_detection_curves(run_dirs, out / "curves.png")
    return DetectionDemoResult(out, rows, attention, table, time.perf_counter() - started)
