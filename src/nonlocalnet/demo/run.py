"""``nonlocalnet demo``: generate the long-range task, train and evaluate the demo models with
the real engine, and write the table, curves and attention figure."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nonlocalnet.data import FrameCache
from nonlocalnet.data.synthetic import SyntheticDataset, generate_long_range_dataset
from nonlocalnet.demo.attention import attention_study
from nonlocalnet.demo.models import DEMO_MODELS, QUICK_MODELS, DemoModel, model_section
from nonlocalnet.demo.recipe import DemoRecipe, full_recipe, quick_recipe
from nonlocalnet.demo.report import summarise, write_curves, write_table
from nonlocalnet.engine import Config, build_model_from_config, config_from_dict, train
from nonlocalnet.models import measure_complexity

__all__ = ["DemoResult", "demo_config", "run_demo"]

log = logging.getLogger("nonlocalnet.demo")


@dataclass
class DemoResult:
    """Where everything went, the per-model rows, and the attention study's numbers."""

    output_dir: Path
    rows: list[dict[str, Any]]
    attention: dict[str, Any]
    table: str
    seconds: float


def demo_config(
    model: DemoModel, data: SyntheticDataset, recipe: DemoRecipe, seed: int, output: Path
) -> Config:
    """The training config of one demo run: the same engine and keys a user's YAML file has."""
    task = data.config
    if task.height != task.width:
        raise ValueError(f"the demo expects square frames, got {task.height}x{task.width}")
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
                "flip": False,
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
                "warmup_iters": recipe.warmup_iters,
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


def run_demo(
    output: str | Path = "runs/demo",
    *,
    quick: bool = False,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    recipe: DemoRecipe | None = None,
) -> DemoResult:
    """Run the whole demo (``quick``: two models, one seed, less data) and write
    ``results.md``/``results.json``, ``curves.png``, ``attention.png`` and one folder per run.
    ``recipe`` replaces the built-in one (tests use a tiny one)."""
    started = time.perf_counter()
    recipe = recipe or (quick_recipe() if quick else full_recipe())
    if seeds is not None:
        recipe = replace(recipe, seeds=seeds)
    out = Path(output)
    data = generate_long_range_dataset(
        Path(data_dir) if data_dir else out / "data", recipe.task, progress=progress
    )
    models = QUICK_MODELS if quick else DEMO_MODELS
    runs, run_dirs = [], {}
    frames = FrameCache()  # every run reads the same small videos: decode each once
    for seed in range(recipe.seeds):
        for model in models:
            folder = out / "runs" / model.key / f"seed{seed}"
            cfg = demo_config(model, data, recipe, seed, folder)
            cfg.train.progress = progress
            result = train(cfg, frame_cache=frames)
            with torch.device("meta"):
                net = build_model_from_config(cfg.model)
            task = data.config
            cost = measure_complexity(net, (1, 3, recipe.clip_length, task.height, task.width))
            runs.append(
                {
                    "key": model.key,
                    "label": model.label,
                    "nonlocal": model.num_nonlocal,
                    "seed": seed,
                    "accuracy": result.final_eval["video_top1"],
                    "seconds": result.seconds,
                    "params": cost.params,
                    "gflops": cost.gmacs,
                }
            )
            if seed == 0:
                run_dirs[model.key] = folder
            log.info("%s seed %d: held-out accuracy %.3f", model.key, seed, runs[-1]["accuracy"])
    rows = summarise(runs)
    attention = attention_study(run_dirs["c2d_nl_embedded"], data, out / "attention.png")
    header = {
        "task": "long-range match (see README: the built-in demo task)",
        "task_config": data.config.to_json(),
        "train_videos": recipe.task.num_train,
        "held_out_videos": recipe.task.num_val,
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "task"},
        "attention": attention,
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = write_table(rows, out, header)
    write_curves(run_dirs, {m.key: m.label for m in models}, out / "curves.png")
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    return DemoResult(out, rows, attention, table, time.perf_counter() - started)
