"""``nonlocalnet demo``: generate the long-range task, train and evaluate the demo models with
the real engine, and write the table, curves and attention figure."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nonlocalnet.data import FrameCache
from nonlocalnet.demo.attention import attention_study
from nonlocalnet.demo.models import ABLATIONS, DEMO_MODELS, QUICK_MODELS, DemoModel, model_section
from nonlocalnet.demo.recipe import DemoRecipe, full_recipe, quick_recipe
from nonlocalnet.demo.report import summarise, write_curves, write_table
from nonlocalnet.demo.synthetic import SyntheticDataset, generate_long_range_dataset
from nonlocalnet.engine import Config, ProgressBar, build_model_from_config, config_from_dict, train
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import measure_complexity
from nonlocalnet.tasks import VideoClassification

__all__ = ["DemoResult", "default_jobs", "demo_config", "run_demo"]

log = logging.getLogger("nonlocalnet.demo")


@dataclass
class DemoResult:
    """Where everything went, the per-model rows, and the attention study's numbers."""

    output_dir: Path
    rows: list[dict[str, Any]]
    attention: dict[str, Any] | None  # None for an ablation (no attention study)
    table: str
    seconds: float


def demo_config(
    model: DemoModel, data: SyntheticDataset, recipe: DemoRecipe, seed: int, output: Path
) -> Config:
    """The training config of one demo run: the same engine and keys a user's YAML file has."""
    task = data.config
    if task.height != task.width:
        raise InvalidValueError(f"the demo expects square frames, got {task.height}x{task.width}")
    size = task.height
    return config_from_dict(
        {
            "output_dir": str(output),
            "seed": seed,
            "model": model_section(model, len(data.class_names), recipe),
            "data": {
                "train_list": str(data.train_list),
                "val_list": str(data.val_list),
                "class_names": str(data.classes_file),
                "clip_length": recipe.clip_length,
                "stride": recipe.frame_stride,
                "num_clips": 1,
                "min_short": size,
                "max_short": size,
                "crop": size,
                "flip": recipe.flip,
                "test_short": size,
                "test_crop": size,
                "num_crops": 1,
                "num_workers": recipe.num_workers,
            },
            "optim": {
                "base_lr": recipe.lr,
                "base_batch_size": recipe.batch_size,
                "weight_decay": recipe.weight_decay,
                "lr_milestones": list(recipe.milestones),
                "warmup_iters": round(recipe.warmup_epochs * task.num_train / recipe.batch_size),
            },
            "train": {
                "batch_size": recipe.batch_size,
                "epochs": recipe.epochs,
                "log_every": 5,
                "progress": True,
            },
            "checkpoint": {"keep_last": 1, "keep_best": False},
            "eval": {"every_epochs": 0, "views": "video", "batch_size": 32},
        }
    )


@dataclass(frozen=True)
class _Run:
    """One training run of the demo: a model, a seed, its folder."""

    model: DemoModel
    seed: int
    folder: Path


def _train_runs(
    runs: list[_Run],
    data: SyntheticDataset,
    recipe: DemoRecipe,
    progress: bool,
    position: int,
    threads: int | None,
) -> list[dict[str, Any]]:
    """Train ``runs`` one after another (in a worker process, or in this one) with one frame cache,
    so every video is decoded once per process; returns one record per run."""
    if threads is not None:
        torch.set_num_threads(threads)
    frames = FrameCache()
    task = data.config
    records = []
    for run in runs:
        # the run folders are the demo's own output: a rerun replaces them instead of having the
        # engine set the old checkpoints aside (superseded-*), which would pile up with every rerun
        shutil.rmtree(run.folder, ignore_errors=True)
        cfg = demo_config(run.model, data, recipe, run.seed, run.folder)
        cfg.train.progress = progress
        label = f"{run.model.key} seed {run.seed}"
        task_of_run = VideoClassification(cfg, frame_cache=frames)
        result = train(cfg, task=task_of_run, progress=ProgressBar(label, position))
        with torch.device("meta"):
            net = build_model_from_config(cfg.model)
        cost = measure_complexity(net, (1, 3, recipe.clip_length, task.height, task.width))
        accuracy = result.final_eval["video_top1"]
        if progress:
            tqdm.write(f"{label}: held-out video accuracy {100 * accuracy:.1f}% ({result.seconds:.0f} s)")
        records.append(
            {
                "key": run.model.key,
                "label": run.model.label,
                "arch": run.model.arch,
                "nonlocal": run.model.num_nonlocal,
                "seed": run.seed,
                "accuracy": accuracy,
                "seconds": result.seconds,
                "params": cost.params,
                "gflops": cost.gmacs,
            }
        )
    return records


def default_jobs() -> int:
    """Parallel training processes: one per CPU core, at most 4 (the demo's networks are too
    small to use several cores each efficiently)."""
    return max(1, min(4, os.cpu_count() or 1))


def _train_all(
    runs: list[_Run], data: SyntheticDataset, recipe: DemoRecipe, progress: bool, jobs: int
) -> list[dict[str, Any]]:
    """Train every run: in this process for ``jobs == 1``, else split round-robin over ``jobs``
    spawned processes with ``threads // jobs`` intra-op threads each."""
    if jobs == 1 or len(runs) == 1:
        return _train_runs(runs, data, recipe, progress, 0, None)
    jobs = min(jobs, len(runs))
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [
            pool.submit(_train_runs, runs[k::jobs], data, recipe, progress, k, threads) for k in range(jobs)
        ]
        records = [r for f in futures for r in f.result()]
    order = {(r.model.key, r.seed): i for i, r in enumerate(runs)}
    return sorted(records, key=lambda r: order[r["key"], r["seed"]])


def run_demo(
    output: str | Path = "runs/demo",
    *,
    quick: bool = False,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    recipe: DemoRecipe | None = None,
    jobs: int | None = None,
    ablation: str | None = None,
    task: str = "v4",
) -> DemoResult:
    """Run the whole demo (``quick``: C2D and I3D with and without a block, one seed, less data) and write
    ``results.md``/``results.json``, ``curves.png``, ``attention.png`` and one folder per run.
    ``ablation`` (a key of :data:`ABLATIONS`: ``stage``, ``blocks``, ``spacetime``) trains that
    ablation's models instead, on the same data and recipe, without the attention study.
    ``task`` picks the built-in recipe's task version (:data:`~nonlocalnet.demo.recipe.TASK_VERSIONS`);
    ``recipe`` replaces the built-in one (tests use a tiny one). ``jobs`` training processes run
    side by side (default :func:`default_jobs`); results depend on it only through float
    rounding (the intra-op thread count changes the order of sums)."""
    started = time.perf_counter()
    recipe = recipe or (quick_recipe(task) if quick else full_recipe(task))
    if seeds is not None:
        recipe = replace(recipe, seeds=seeds)
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise InvalidValueError(f"jobs must be >= 1, got {jobs}")
    if ablation is not None and ablation not in ABLATIONS:
        raise InvalidValueError(f"unknown ablation {ablation!r}; expected one of {sorted(ABLATIONS)}")
    out = Path(output)
    data = generate_long_range_dataset(
        Path(data_dir) if data_dir else out / "data", recipe.task, progress=progress, workers=jobs
    )
    models = ABLATIONS[ablation] if ablation else QUICK_MODELS if quick else DEMO_MODELS
    plan = [
        _Run(model, seed, out / "runs" / model.key / f"seed{seed}")
        for seed in range(recipe.seeds)
        for model in models
    ]
    runs = _train_all(plan, data, recipe, progress, jobs)
    for r in runs:
        log.info("%s seed %d: held-out accuracy %.3f", r["key"], r["seed"], r["accuracy"])
    run_dirs = {p.model.key: p.folder for p in plan if p.seed == 0}
    rows = summarise(runs)
    attention = (
        None if ablation else attention_study(run_dirs["c2d_nl_embedded"], data, out / "attention.png")
    )
    header = {
        "ablation": ablation,
        "task": f"long-range match {task} (see docs/demo.md: the built-in demo task)",
        "task_config": data.config.to_json(),
        "train_videos": recipe.task.num_train,
        "held_out_videos": recipe.task.num_val,
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "task"},
        "jobs": jobs,
        "attention": attention,
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = write_table(rows, out, header)
    write_curves(run_dirs, {m.key: m.label for m in models}, out / "curves.png")
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    return DemoResult(out, rows, attention, table, time.perf_counter() - started)
