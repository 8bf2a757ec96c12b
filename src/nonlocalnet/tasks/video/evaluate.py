"""The video task's evaluation: fully convolutional testing over clips x crops, clip and video
accuracy, ``nonlocalnet eval``'s files."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from nonlocalnet.atomic import atomic_write
from nonlocalnet.data import BadDataLog, BadSample, ClipBatch, FrameCache, VideoSample, build_loader
from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.config import ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext, init_distributed
from nonlocalnet.models import VideoResNet
from nonlocalnet.models.model_file import ModelFile, read_model_file
from nonlocalnet.tasks.video.config import INIT_KINDS, VideoConfig
from nonlocalnet.tasks.video.metrics import EvalResult, ViewScores
from nonlocalnet.tasks.video.predict import load_model_weights
from nonlocalnet.tasks.video.setup import build_dataset, build_model_from_config, load_samples

__all__ = [
    "SCORE_FORMATS",
    "EvalReport",
    "config_weights",
    "run_evaluation",
    "score_samples",
    "score_views",
    "views_per_video",
    "write_video_scores",
]

log = logging.getLogger("nonlocalnet.eval")


def views_per_video(cfg: VideoConfig, views: str) -> int:
    return cfg.data.num_clips * cfg.data.num_crops if views == "video" else 1


@torch.no_grad()
def score_views(
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
) -> tuple[ViewScores, list[BadSample]]:
    """Score every view of every video with ``model.fully_convolutional_scores`` (time pooled,
    softmax at each ``window``-sized square of the last feature map, averaged: pass the res5
    side of a training crop): the softmax scores, gathered over the ranks (the same on every
    rank; ``.result()`` reduces them to clip and video accuracy), and the broken videos, not
    scored.

    Batches hold ``(B, num_crops, 3, T, H, W)`` (all crops of one clip) or ``(B, 3, T, H, W)``.
    """
    was_training = model.training
    model.eval()
    scores = ViewScores(num_classes, views_per_video)
    bad: list[BadSample] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    total = len(loader) if isinstance(loader, Sized) else None
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
    return merged, every_bad


def score_samples(
    model: VideoResNet,
    cfg: VideoConfig,
    ctx: DistContext,
    samples: list[VideoSample],
    views: str,
    memory_format: torch.memory_format = torch.contiguous_format,
    frame_cache: FrameCache | None = None,
) -> tuple[ViewScores, list[BadSample]]:
    """:func:`score_views` on ``samples`` with the test protocol of ``cfg`` (``views``:
    ``"video"``, num_clips x num_crops views, or ``"clip"``, one centre view), split over the
    ranks."""
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
    return score_views(
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


SCORE_FORMATS = (".csv", ".npz")
"""The per-video score files ``run_evaluation(save_scores=...)`` writes, by suffix."""


@dataclass
class EvalReport(EvalResult):
    """The :class:`EvalResult` of a video set, knowing its videos: ``paths`` (in list order) and
    ``views_used`` (the views scored per video; 0: every view failed to decode, so the video is
    left out of the accuracies and counted in ``eval.json``'s ``bad_data``)."""

    paths: list[str] = field(default_factory=list)
    views_used: list[int] = field(default_factory=list)

    def missing_views(self) -> list[tuple[str, int]]:
        """``(path, views scored)`` of every video scored with fewer than ``views_per_video``."""
        return [(p, n) for p, n in zip(self.paths, self.views_used, strict=True) if n < self.views_per_video]

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {
            "missing_views": [{"path": p, "views": n} for p, n in self.missing_views()]
        }

    def summary(self, show: int = 5) -> str:
        """The accuracies, then the videos with missing views: counted, the first ``show`` named."""
        total, v = len(self.paths), self.views_per_video
        missing = self.missing_views()
        if not missing:
            return f"{super().summary()}\nmissing views: none (all {total} videos scored with {v} views)"
        some = [(p, n) for p, n in missing if n > 0]
        none = [p for p, n in missing if n == 0]
        lines = [super().summary(), f"missing views: {len(missing)} of {total} videos (listed in eval.json)"]
        if some:
            named = ", ".join(f"{p} ({n}/{v})" for p, n in some[:show])
            more = f" and {len(some) - show} more" if len(some) > show else ""
            lines.append(f"  {len(some)} scored with fewer than {v} views (their average): {named}{more}")
        if none:
            more = f" and {len(none) - show} more" if len(none) > show else ""
            named = ", ".join(none[:show])
            lines.append(f"  {len(none)} not scored (no view decoded; not in the accuracies): {named}{more}")
        return "\n".join(lines)


def config_weights(cfg: VideoConfig) -> str:
    """The weights name ``cfg.model.init`` gives (``configs/released/``: the file it evaluates);
    a config that names none is a :class:`ConfigError`."""
    if cfg.model.init in INIT_KINDS:
        raise ConfigError(
            f"give the checkpoint (a weights file or name): model.init is {cfg.model.init!r}, not a "
            "weights name"
        )
    return cfg.model.init


def run_evaluation(
    cfg: VideoConfig,
    checkpoint: str | Path | ModelFile | None = None,
    *,
    output_dir: str | Path | None = None,
    save_scores: str | Path | None = None,
) -> EvalReport:
    """``nonlocalnet eval``: load ``checkpoint`` (a training checkpoint, a run's
    ``model.safetensors``, converted weights or the authors' ``.pkl``; a path or a file already
    read) into the model
    ``cfg.model`` describes (:func:`~nonlocalnet.tasks.video.predict.load_model_weights`), evaluate
    on ``cfg.data`` val with num_clips x num_crops views, and write ``eval.json`` (strict JSON:
    ``null`` accuracy for a class without videos; the videos with missing views),
    ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` to ``output_dir``. Without
    ``checkpoint``, the weights ``model.init`` names (``configs/released/``). The class names
    a training checkpoint holds label the validation data (see :func:`load_samples`).
    ``save_scores``: also write every video's scores there (:func:`write_video_scores`; ``.csv``
    or ``.npz``)."""
    check_config(cfg, "run_evaluation(cfg, checkpoint)", VideoConfig)
    if checkpoint is None:
        checkpoint = config_weights(cfg)
    if save_scores is not None:
        _check_scores_path(Path(save_scores))  # before the evaluation, not after it
    ctx = init_distributed(cfg.device, cfg.train.dist_timeout_s)
    # on an error, no destroy_process_group: it would wait for a dead peer
    result = _evaluate_run(cfg, ctx, checkpoint, output_dir, save_scores)
    ctx.shutdown()
    return result


def _evaluate_run(
    cfg: VideoConfig,
    ctx: DistContext,
    checkpoint: str | Path | ModelFile,
    output_dir: str | Path | None,
    save_scores: str | Path | None,
) -> EvalReport:
    started = time.perf_counter()
    weights = checkpoint if isinstance(checkpoint, ModelFile) else read_model_file(checkpoint)
    trained_names = weights.class_names
    if trained_names is not None and cfg.data.class_names and trained_names == _numbered(len(trained_names)):
        trained_names = None  # trained on integer labels: the class_names file names them
    samples, class_names = load_samples(cfg.data, "val", class_names=trained_names)
    if cfg.model.num_classes != len(class_names):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the data has {len(class_names)} classes"
        )
    model = build_model_from_config(cfg.model)
    load_model_weights(model, weights, cfg)
    model.to(ctx.device)
    scores, bad = score_samples(model, cfg, ctx, samples, "video")
    views = [len(scores.scores.get(i, {})) for i in range(len(samples))]
    result = EvalReport(**vars(scores.result()), paths=[s.path for s in samples], views_used=views)
    bad_log = BadDataLog()
    bad_log.add(bad)
    if ctx.is_main:
        out = Path(output_dir or Path(cfg.output_dir) / "eval")
        report = {"checkpoint": str(weights.path), **result.to_dict(), "class_names": class_names}
        report |= {"bad_data": bad_log.summary(), "seconds": time.perf_counter() - started}
        _write_eval_files(result, class_names, report, out)
        if save_scores is not None:
            write_video_scores(save_scores, scores, samples, class_names)
    bad_log.check(seen=len(samples), threshold=cfg.data.bad_data_threshold)
    return result


_SCORE_COLUMNS = ("index", "path", "label", "label_name", "predicted", "predicted_name", "top5", "views")


def _check_scores_path(path: Path) -> None:
    if path.suffix.lower() not in SCORE_FORMATS:
        raise ConfigError(
            f"--save-scores {path}: unknown format {path.suffix or '(no suffix)'!r}; name a "
            f"{' or '.join(SCORE_FORMATS)} file"
        )


def _video_scores(scores: ViewScores, n: int, topk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Of ``n`` videos: the softmax averaged over the views scored (NaN rows where none), the
    views scored, the predicted class and the ``topk`` classes (-1 where none)."""
    c = scores.num_classes
    mean = torch.full((n, c), float("nan"))
    views = torch.zeros(n, dtype=torch.int64)
    for i, by_view in scores.scores.items():
        mean[i] = torch.stack(list(by_view.values())).mean(0)
        views[i] = len(by_view)
    scored = views > 0
    predicted = torch.where(scored, mean.nan_to_num(-1.0).argmax(1), -1)
    top = mean.nan_to_num(-1.0).topk(min(topk, c), dim=1).indices
    top[~scored] = -1
    return mean, views, predicted, top


def write_video_scores(
    path: str | Path,
    scores: ViewScores,
    samples: Sequence[VideoSample],
    class_names: Sequence[str],
    *,
    topk: int = 5,
) -> Path:
    """Every video's scores, in list order, as mmaction2's ``--out`` and PySlowFast's
    ``SAVE_RESULTS_PATH`` keep them: the softmax averaged over the views scored, the predicted
    class, the ``topk`` classes (best first) and the number of views scored (0: none decoded,
    no scores). ``.csv``: columns ``index, path, label, label_name, predicted, predicted_name,
    top5`` (class indices, space-separated), ``views``, then ``score_0 .. score_{C-1}``;
    ``.npz`` (``numpy.load`` without pickle): arrays ``paths, labels, predicted, top5, views,
    scores`` (float32, NaN rows where not scored), ``class_names``, ``views_per_video``; -1
    where a video has no prediction."""
    path = Path(path)
    _check_scores_path(path)
    c = scores.num_classes
    mean, views, predicted, top = _video_scores(scores, len(samples), topk)
    scored = views > 0
    labels = [s.label for s in samples]
    if path.suffix.lower() == ".npz":

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    paths=np.array([s.path for s in samples], dtype=str),
                    labels=np.array(labels, dtype=np.int64),
                    predicted=predicted.numpy(),
                    top5=top.numpy(),
                    views=views.numpy(),
                    scores=mean.numpy().astype(np.float32),
                    class_names=np.array(list(class_names), dtype=str),
                    views_per_video=np.int64(scores.views_per_video),
                )

    else:

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow([*_SCORE_COLUMNS, *(f"score_{k}" for k in range(c))])
                for i, sample in enumerate(samples):
                    row = [i, sample.path, sample.label, class_names[sample.label]]
                    if not scored[i]:
                        writer.writerow([*row, "", "", "", 0, *([""] * c)])
                        continue
                    p = int(predicted[i])
                    writer.writerow(
                        [*row, p, class_names[p], " ".join(str(int(k)) for k in top[i]), int(views[i])]
                        + [f"{float(v):.9g}" for v in mean[i]]
                    )

    return atomic_write(path, write)


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
