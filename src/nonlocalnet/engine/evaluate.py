"""Evaluation: fully convolutional testing over clips x crops, clip and video accuracy."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nonlocalnet.data import BadDataLog, BadSample, ClipBatch, FrameCache, VideoSample, build_loader
from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.config import Config, ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext, init_distributed
from nonlocalnet.engine.metrics import EvalResult, ViewScores
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.engine.setup import build_dataset, build_model_from_config, load_samples
from nonlocalnet.models import VideoResNet

__all__ = ["evaluate", "evaluate_samples", "run_evaluation", "views_per_video"]

log = logging.getLogger("nonlocalnet.eval")


def views_per_video(cfg: Config, views: str) -> int:
    return cfg.data.num_clips * cfg.data.num_crops if views == "video" else 1


@torch.no_grad()
def evaluate(
    model: VideoResNet,
    loader: Iterable[ClipBatch],
    ctx: DistContext,
    *,
    num_classes: int,
    views_per_video: int,
    window: int | None = None,
    amp: str = "none",
    memory_format: torch.memory_format = torch.contiguous_format,
    progress: bool = True,
) -> tuple[EvalResult, list[BadSample]]:
    """Score every view of every video with ``model.fully_convolutional_scores`` (time pooled,
    softmax at each ``window``-sized square of the last feature map, averaged: pass the res5
    side of a training crop) and reduce to clip and video accuracy.

    Batches hold ``(B, num_crops, 3, T, H, W)`` (all crops of one clip) or ``(B, 3, T, H, W)``.
    Results are gathered over ranks; broken videos are returned, not scored.
    """
    was_training = model.training
    model.eval()
    scores = ViewScores(num_classes, views_per_video)
    bad: list[BadSample] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(
        batches, total=total, desc="eval", unit="batch", disable=not (progress and ctx.is_main)
    ):
        bad.extend(batch.bad)
        if len(batch.label) == 0:
            continue
        video = batch.video
        crops = video.shape[1] if video.dim() == 6 else 1
        flat = video.reshape(-1, *video.shape[-4:]).to(device).contiguous(memory_format=memory_format)
        with autocast_context(amp, device):
            probs = model.fully_convolutional_scores(flat, window).float()
        probs = probs.reshape(len(batch.label), crops, num_classes).cpu()
        for row in range(len(batch.label)):
            for crop in range(crops):
                view = int(batch.clip[row]) * crops + crop
                scores.add(int(batch.index[row]), view, probs[row, crop], int(batch.label[row]))
    model.train(was_training)
    merged = ViewScores(num_classes, views_per_video)
    every_bad: list[BadSample] = []
    for state, part_bad in ctx.gather_objects((scores.state(), bad)):
        merged.merge(state)
        every_bad.extend(part_bad)
    return merged.result(), every_bad


def evaluate_samples(
    model: VideoResNet,
    cfg: Config,
    ctx: DistContext,
    samples: list[VideoSample],
    *,
    views: str,
    memory_format: torch.memory_format = torch.contiguous_format,
    frame_cache: FrameCache | None = None,
) -> tuple[EvalResult, list[BadSample]]:
    """:func:`evaluate` on ``samples`` with the test protocol of ``cfg`` (``views``: ``"video"``,
    num_clips x num_crops views, or ``"clip"``, one centre view), split over the ranks."""
    dataset = build_dataset(
        cfg.data, samples, train=False, seed=cfg.seed, views=views, frame_cache=frame_cache
    )
    loader = build_loader(
        dataset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        distributed=(ctx.rank, ctx.world_size) if ctx.distributed else None,
        drop_last=False,
    )
    return evaluate(
        model,
        loader,
        ctx,
        num_classes=cfg.model.num_classes,
        views_per_video=views_per_video(cfg, views),
        window=model.res5_size(cfg.data.crop),
        amp=cfg.train.amp,
        memory_format=memory_format,
        progress=cfg.train.progress,
    )


def run_evaluation(
    cfg: Config, checkpoint: str | Path, *, output_dir: str | Path | None = None
) -> EvalResult:
    """``nonlocalnet eval``: load ``checkpoint`` (a training checkpoint or model safetensors),
    evaluate on ``cfg.data`` val with num_clips x num_crops views, and write ``eval.json``
    (strict JSON: ``null`` accuracy for a class without videos), ``per_class.csv``,
    ``confusion.csv`` and ``confusion.png`` to ``output_dir``. The class names a training
    checkpoint holds label the validation data (see :func:`load_samples`)."""
    check_config(cfg, "run_evaluation(cfg, checkpoint)")
    ctx = init_distributed(cfg.device, cfg.train.dist_timeout_s)
    # on an error, no destroy_process_group: it would wait for a dead peer
    result = _evaluate_run(cfg, ctx, checkpoint, output_dir)
    ctx.shutdown()
    return result


def _evaluate_run(
    cfg: Config, ctx: DistContext, checkpoint: str | Path, output_dir: str | Path | None
) -> EvalResult:
    started = time.perf_counter()
    weights = read_model_file(checkpoint, kinds=("checkpoint", "safetensors", "state_dict"))
    trained_names = weights.class_names
    if trained_names is not None and cfg.data.class_names and trained_names == _numbered(len(trained_names)):
        trained_names = None  # trained on integer labels: the class_names file names them
    samples, class_names = load_samples(cfg.data, "val", class_names=trained_names)
    if cfg.model.num_classes != len(class_names):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the data has {len(class_names)} classes"
        )
    model = build_model_from_config(cfg.model)
    model.load_state_dict(weights.state)
    model.to(ctx.device)
    result, bad = evaluate_samples(model, cfg, ctx, samples, views="video")
    bad_log = BadDataLog()
    bad_log.add(bad)
    if ctx.is_main:
        out = Path(output_dir or Path(cfg.output_dir) / "eval")
        report = {"checkpoint": str(checkpoint), **result.to_dict(), "class_names": class_names}
        report |= {"bad_data": bad_log.summary(), "seconds": time.perf_counter() - started}
        _write_eval_files(result, class_names, report, out)
    bad_log.check(seen=len(samples), threshold=cfg.data.bad_data_threshold)
    return result


def _write_eval_files(result: EvalResult, class_names: list[str], report: dict[str, Any], out: Path) -> None:
    """``eval.json`` (strict JSON), ``per_class.csv``, ``confusion.csv`` and ``confusion.png``."""
    from nonlocalnet.viz import plot_confusion, write_confusion_csv

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    _write_per_class_csv(result, class_names, out / "per_class.csv")
    write_confusion_csv(result.confusion, class_names, out / "confusion.csv")
    plot_confusion(result.confusion, class_names, out / "confusion.png")


def _write_per_class_csv(result: EvalResult, class_names: list[str], path: str | Path) -> Path:
    """``class,accuracy,videos`` rows (csv module quoting: names may hold commas or quotes); the
    accuracy of a class without videos is left empty."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "accuracy", "videos"])
        for name, acc, n in zip(class_names, result.per_class_accuracy, result.confusion.sum(1), strict=True):
            writer.writerow([name, "" if math.isnan(acc) else f"{acc:.6f}", int(n)])
    return path


def _numbered(n: int) -> list[str]:
    return [str(i) for i in range(n)]
