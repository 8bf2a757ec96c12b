"""``nonlocalnet detect-demo``: the built-in detection task ("whose key is it?",
:mod:`nonlocalnet.demo.detection_data`), Mask R-CNN (and Keypoint R-CNN) with and without the
paper's non-local block trained on it by the real engine, and a table in the style of the
paper's Table 5 (held-out COCOeval numbers over seeds), training curves and an attention figure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from nonlocalnet.demo.detection_attention import attention_study, key_swap_study
from nonlocalnet.demo.detection_data import (
    KEYPOINT_OKS_SIGMAS,
    CocoSplit,
    ContextShapesConfig,
    context_shapes_splits,
)
from nonlocalnet.demo.run import default_jobs
from nonlocalnet.engine import Config, config_from_dict, read_jsonl, train
from nonlocalnet.errors import InvalidValueError

__all__ = [
    "DETECTION_DEMO_MODELS",
    "DetectionDemoResult",
    "DetectionRecipe",
    "detection_demo_config",
    "full_detection_recipe",
    "quick_detection_recipe",
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

DEMO_DATA = ContextShapesConfig(key_size=28, object_size=(10, 16), min_objects=1, max_objects=2, rule="key")
"""The demo's data: 1 or 2 neutral shapes of 10-16 px whose category is the colour of a 28-px key
marker at least 56 px away (``rule="key"``)."""

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


@dataclass(frozen=True)
class DetectionRecipe:
    """The data sizes and the SGD recipe shared by every demo detector (chosen on the tuning
    split, never on the held-out images the table reports)."""

    data: ContextShapesConfig = field(default_factory=lambda: DEMO_DATA)
    num_train: int = 800
    num_val: int = 300
    num_tuning: int = 150
    models: tuple[str, ...] = ("maskrcnn_tiny_fpn", "maskrcnn_tiny_fpn_nl")
    lr: float = 0.02
    nonlocal_lr_mult: float = 10.0
    batch_size: int = 8
    epochs: int = 4
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.8,)
    warmup_iters: int = 100
    seeds: int = 3
    data_seed: int = 0
    # the detectors' block (DETECTOR_BLOCK: no output norm) with the chunked softmax: with the
    # dispatcher's pick (fused) seed 0 did not learn on an AVX2 EPYC (docs/detection.md: the recipe
    # is fragile to float rounding)
    nonlocal_options: dict = field(default_factory=lambda: {"algorithm": "chunked"})
    model_options: dict = field(default_factory=dict)
    num_workers: int = 0


def full_detection_recipe() -> DetectionRecipe:
    """Mask R-CNN and Keypoint R-CNN, each with and without the block, three seeds."""
    return DetectionRecipe(
        models=(
            "maskrcnn_tiny_fpn",
            "maskrcnn_tiny_fpn_nl",
            "keypointrcnn_tiny_fpn",
            "keypointrcnn_tiny_fpn_nl",
        )
    )


def quick_detection_recipe() -> DetectionRecipe:
    """Mask R-CNN with and without the block, seed 0, 150 held-out images: the margin CI checks.
    Its training is the full run's seed 0 (same images, steps and seed): with fewer steps the
    block does not leave its identity start in time (tuning split: 0 of 3 seeds at 300 steps)."""
    return DetectionRecipe(num_val=150, num_tuning=0, seeds=1)


def detection_demo_config(
    model: str,
    splits: dict[str, CocoSplit],
    recipe: DetectionRecipe,
    seed: int,
    output: Path,
    *,
    evaluate_on: str = "val",
) -> Config:
    """The training config of one demo run: the keys a user's detection YAML file has."""
    size = recipe.data.image_size
    steps_per_epoch = recipe.num_train // recipe.batch_size
    return config_from_dict(
        {
            "task": "detection",
            "output_dir": str(output),
            "seed": seed,
            "detection": {
                "model": model,
                "nonlocal_options": dict(recipe.nonlocal_options),
                "model_options": dict(recipe.model_options),
                "min_size": [size],
                "max_size": size,
                "train_images": str(splits["train"].images),
                "train_annotations": str(splits["train"].annotations),
                "val_images": str(splits[evaluate_on].images),
                "val_annotations": str(splits[evaluate_on].annotations),
                "flip": True,
                "aspect_ratio_grouping": False,
                "oks_sigmas": list(KEYPOINT_OKS_SIGMAS),
                "min_keypoints_per_image": 0,  # 1-2 objects of 4 keypoints: under torchvision's 10
            },
            "data": {"num_workers": recipe.num_workers},
            "optim": {
                "base_lr": recipe.lr,
                "nonlocal_lr_mult": recipe.nonlocal_lr_mult,
                "base_batch_size": recipe.batch_size,
                "nesterov": False,
                "weight_decay": recipe.weight_decay,
                "weight_decay_norm": 0.0,
                "lr_milestones": list(recipe.milestones),
                "warmup_iters": min(recipe.warmup_iters, max(steps_per_epoch - 1, 0)),
                "warmup_factor": 0.001,
            },
            "train": {
                "batch_size": recipe.batch_size,
                "epochs": recipe.epochs,
                "log_every": 10,
                "progress": True,
            },
            "checkpoint": {"keep_last": 1, "keep_best": False},
            "eval": {"every_epochs": 0, "batch_size": 8},
        }
    )


@dataclass(frozen=True)
class _Run:
    model: str
    seed: int
    folder: Path


def _train_runs(
    runs: list[_Run],
    splits: dict[str, CocoSplit],
    recipe: DetectionRecipe,
    progress: bool,
    position: int,
    threads: int | None,
    evaluate_on: str,
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
        result = train(cfg, progress_desc=label, progress_position=position)
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


def _train_all(
    runs: list[_Run],
    splits: dict[str, CocoSplit],
    recipe: DetectionRecipe,
    progress: bool,
    jobs: int,
    evaluate_on: str,
) -> list[dict[str, Any]]:
    if jobs == 1 or len(runs) == 1:
        return _train_runs(runs, splits, recipe, progress, 0, None, evaluate_on)
    jobs = min(jobs, len(runs))
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [
            pool.submit(_train_runs, runs[k::jobs], splits, recipe, progress, k, threads, evaluate_on)
            for k in range(jobs)
        ]
        records = [r for f in futures for r in f.result()]
    order = {(r.model, r.seed): i for i, r in enumerate(runs)}
    return sorted(records, key=lambda r: order[r["model"], r["seed"]])


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


def run_detection_demo(
    output: str | Path = "runs/detect-demo",
    *,
    quick: bool = False,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    jobs: int | None = None,
    progress: bool = True,
    recipe: DetectionRecipe | None = None,
    tuning: bool = False,
) -> DetectionDemoResult:
    """Generate the task, train every model of the recipe on it for each seed, evaluate on the
    held-out split (``tuning``: on the tuning split instead, to choose a recipe), and write
    ``results.md``/``results.json``, ``curves.png``, ``attention.png`` and one folder per run."""
    started = time.perf_counter()
    recipe = recipe or (quick_detection_recipe() if quick else full_detection_recipe())
    if seeds is not None:
        if seeds < 1:
            raise InvalidValueError(f"seeds must be >= 1, got {seeds}")
        recipe = replace(recipe, seeds=seeds)
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise InvalidValueError(f"jobs must be >= 1, got {jobs}")
    if tuning and not recipe.num_tuning:
        raise InvalidValueError("tuning=True needs a recipe with num_tuning > 0")
    out = Path(output)
    splits = context_shapes_splits(
        Path(data_dir) if data_dir else out / "data",
        train=recipe.num_train,
        val=recipe.num_val,
        tuning=recipe.num_tuning,
        seed=recipe.data_seed,
        config=recipe.data,
    )
    evaluate_on = "tuning" if tuning else "val"
    plan = [_Run(m, s, out / "runs" / m / f"seed{s}") for s in range(recipe.seeds) for m in recipe.models]
    runs = _train_all(plan, splits, recipe, progress, jobs, evaluate_on)
    rows = summarise_detection(runs)
    run_dirs = {p.model: p.folder for p in plan if p.seed == 0}
    nl_model = next((m for m in recipe.models if m.endswith("_nl") and m.startswith("maskrcnn")), None)
    attention = None
    if nl_model is not None:
        attention = attention_study(run_dirs[nl_model], splits[evaluate_on], out / "attention.png")
    key_swap: dict[str, list[dict[str, Any]]] = {}
    for p in plan:  # every run: does its label follow the key?
        key_swap.setdefault(p.model, []).append(key_swap_study(p.folder, splits[evaluate_on]))
    table = render_detection_table(rows) + render_key_swap(key_swap)
    header = {
        "task": "whose key is it? (docs/detection.md: the built-in task)",
        "data": dataclasses.asdict(recipe.data),
        "evaluated_on": evaluate_on,
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "data"},
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
