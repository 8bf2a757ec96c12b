"""``nonlocalnet demo``: generate the long-range task, train and evaluate the demo models with
the real engine, and write the table, curves and attention figure."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
import typing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from nonlocalnet.data import FrameCache
from nonlocalnet.demo.attention import attention_study
from nonlocalnet.demo.models import ABLATIONS, DEMO_MODELS, QUICK_MODELS, DemoModel, model_section
from nonlocalnet.demo.recipe import (
    DemoSection,
    VideoDemoConfig,
    recipe_settings,
    run_config,
    video_recipe,
    video_recipe_name,
)
from nonlocalnet.demo.report import summarise, write_curves, write_table
from nonlocalnet.demo.synthetic import SyntheticDataset, generate_long_range_dataset
from nonlocalnet.engine import ProgressBar, train
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import measure_complexity
from nonlocalnet.tasks import VideoClassification, VideoConfig
from nonlocalnet.tasks.video import build_model_from_config

__all__ = ["DemoResult", "default_jobs", "demo_config", "run_demo", "seeds_and_jobs"]

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
    model: DemoModel, data: SyntheticDataset, recipe: VideoDemoConfig, seed: int, output: Path
) -> VideoConfig:
    """The training config of one demo run (:func:`~nonlocalnet.demo.recipe.run_config`): the
    recipe's, with the run's folder, seed and network, the generated videos' files and frame size,
    and the warm-up of ``recipe.demo.warmup_epochs`` in steps."""
    task = data.config
    if task.height != task.width:
        raise InvalidValueError(f"the demo expects square frames, got {task.height}x{task.width}")
    size = task.height
    frames = ("min_short", "max_short", "crop", "test_short", "test_crop")
    warmup = recipe.demo.warmup_epochs * task.num_train / recipe.train.batch_size
    cfg = run_config(
        recipe,
        {
            "output_dir": str(output),
            "seed": seed,
            "model": model_section(model, len(data.class_names), recipe.demo),
            "data": {
                "train_list": str(data.train_list),
                "val_list": str(data.val_list),
                "class_names": str(data.classes_file),
                **dict.fromkeys(frames, size),
            },
            "optim": {"warmup_iters": round(warmup)},
        },
    )
    return typing.cast(VideoConfig, cfg)  # run_config builds the class of the recipe's task


M = TypeVar("M")


@dataclass(frozen=True)
class DemoRun(Generic[M]):
    """One training run of a demo: a model (the video demo's :class:`DemoModel`, the detection
    demo's registry name), a seed, its folder."""

    model: M
    seed: int
    folder: Path


def _train_runs(
    runs: list[DemoRun[DemoModel]],
    data: SyntheticDataset,
    recipe: VideoDemoConfig,
    progress: bool,
    *,
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
        result = train(
            cfg, task=VideoClassification(cfg, frame_cache=frames), progress=ProgressBar(label, position)
        )
        with torch.device("meta"):
            net = build_model_from_config(cfg.model)
        cost = measure_complexity(net, (1, 3, recipe.data.clip_length, task.height, task.width))
        if result.final_eval is None:
            raise InvalidValueError(f"{label}: the run has no final evaluation (no held-out videos?)")
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


def seeds_and_jobs(demo: DemoSection, seeds: int | None, jobs: int | None) -> tuple[int, int]:
    """The seeds (``seeds``, else the recipe's ``demo.seeds``) and training processes (``jobs``,
    else :func:`default_jobs`) of a demo run, each checked to be >= 1."""
    seeds = demo.seeds if seeds is None else seeds
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1 or seeds < 1:
        raise InvalidValueError(f"jobs and seeds must be >= 1, got jobs={jobs}, seeds={seeds}")
    return seeds, jobs


def train_all(
    train_runs: Callable[..., list[dict[str, Any]]], runs: list[DemoRun[M]], jobs: int
) -> list[dict[str, Any]]:
    """Train every run with ``train_runs(runs, position=, threads=)`` (one record per run, in
    order): in this process for ``jobs == 1``, else split round-robin over ``jobs`` spawned
    processes with ``threads // jobs`` intra-op threads each. The records are in ``runs``' order."""
    if jobs == 1 or len(runs) == 1:
        return train_runs(runs, position=0, threads=None)
    jobs = min(jobs, len(runs))
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(train_runs, runs[k::jobs], position=k, threads=threads) for k in range(jobs)]
        parts = [f.result() for f in futures]
    return [parts[i % jobs][i // jobs] for i in range(len(runs))]


def run_demo(
    output: str | Path = "runs/demo",
    *,
    quick: bool = False,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    recipe: VideoDemoConfig | str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    ablation: str | None = None,
    task: str = "v4",
) -> DemoResult:
    """Run the whole demo (``quick``: C2D and I3D with and without a block, one seed, less data) and write
    ``results.md``/``results.json``, ``curves.png``, ``attention.png`` and one folder per run.
    ``ablation`` (a key of :data:`ABLATIONS`: ``stage``, ``blocks``, ``spacetime``) trains that
    ablation's models instead, on the same data and recipe, without the attention study.
    ``task`` picks the built-in recipe's task version (:data:`~nonlocalnet.demo.recipe.TASK_VERSIONS`);
    ``recipe`` (a :class:`~nonlocalnet.demo.recipe.VideoDemoConfig`, a built-in recipe's name or a
    recipe file) replaces the built-in one; ``seeds`` replaces its ``demo.seeds``. ``jobs`` training
    processes run side by side (default :func:`default_jobs`); results depend on it only through
    float rounding (the intra-op thread count changes the order of sums)."""
    started = time.perf_counter()
    source = video_recipe_name(task, quick) if recipe is None else recipe
    recipe = source if isinstance(source, VideoDemoConfig) else video_recipe(source)
    seeds, jobs = seeds_and_jobs(recipe.demo, seeds, jobs)
    if ablation is not None and ablation not in ABLATIONS:
        raise InvalidValueError(f"unknown ablation {ablation!r}; expected one of {sorted(ABLATIONS)}")
    out = Path(output)
    generated = recipe.demo.long_range_task()
    data = generate_long_range_dataset(
        Path(data_dir) if data_dir else out / "data", generated, progress=progress, workers=jobs
    )
    models = ABLATIONS[ablation] if ablation else QUICK_MODELS if quick else DEMO_MODELS
    plan = [DemoRun(m, seed, out / "runs" / m.key / f"seed{seed}") for seed in range(seeds) for m in models]
    runs = train_all(partial(_train_runs, data=data, recipe=recipe, progress=progress), plan, jobs)
    for r in runs:
        log.info("%s seed %d: held-out accuracy %.3f", r["key"], r["seed"], r["accuracy"])
    run_dirs = {p.model.key: p.folder for p in plan if p.seed == 0}
    rows = summarise(runs)
    attention = (
        None if ablation else attention_study(run_dirs["c2d_nl_embedded"], data, out / "attention.png")
    )
    header = {
        "ablation": ablation,
        "task": "long-range match (see docs/demo.md: the built-in demo task)",
        "task_config": data.config.to_json(),
        "train_videos": generated.num_train,
        "held_out_videos": generated.num_val,
        "recipe": recipe_settings(recipe),
        "seeds": seeds,
        "jobs": jobs,
        "attention": attention,
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = write_table(rows, out, header)
    write_curves(run_dirs, {m.key: m.label for m in models}, out / "curves.png")
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    return DemoResult(out, rows, attention, table, time.perf_counter() - started)
