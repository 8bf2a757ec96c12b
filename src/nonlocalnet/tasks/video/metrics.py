"""The video task's accuracy bookkeeping: clip accuracy (each view alone) and video accuracy
(softmax averaged over all views of a video), top-1/top-5, per class, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nonlocalnet.engine.metrics import topk_correct
from nonlocalnet.errors import InvalidValueError

__all__ = ["EvalResult", "ViewScores"]


@dataclass
class EvalResult:
    """Results of one evaluation. ``clip_*``: every view scored on its own (the paper's "clip"
    numbers); ``video_*``: softmax scores averaged over the ``views_per_video`` views.
    ``per_class_accuracy`` is NaN for a class without videos."""

    clip_top1: float
    clip_top5: float
    video_top1: float
    video_top5: float
    num_videos: int
    views_per_video: int
    per_class_accuracy: list[float]
    confusion: np.ndarray
    incomplete_videos: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON data: a class without videos has accuracy ``None`` (JSON ``null``),
        not NaN."""
        return {
            "clip_top1": self.clip_top1,
            "clip_top5": self.clip_top5,
            "video_top1": self.video_top1,
            "video_top5": self.video_top5,
            "num_videos": self.num_videos,
            "views_per_video": self.views_per_video,
            "per_class_accuracy": [None if math.isnan(a) else a for a in self.per_class_accuracy],
            "incomplete_videos": self.incomplete_videos,
        }

    def summary(self) -> str:
        return (
            f"clip accuracy (1 view): top-1 {100 * self.clip_top1:.2f}%  top-5 {100 * self.clip_top5:.2f}%\n"
            f"video accuracy ({self.views_per_video} views averaged): top-1 {100 * self.video_top1:.2f}%  "
            f"top-5 {100 * self.video_top5:.2f}%  over {self.num_videos} videos"
        )


class ViewScores:
    """Collects per-view class probabilities keyed by (video, view) and reduces them."""

    def __init__(self, num_classes: int, views_per_video: int) -> None:
        self.num_classes = num_classes
        self.views_per_video = views_per_video
        self.scores: dict[int, dict[int, Tensor]] = {}
        self.labels: dict[int, int] = {}

    def add(self, video: int, view: int, probs: Tensor, label: int) -> None:
        if probs.shape != (self.num_classes,):
            raise InvalidValueError(
                f"expected probabilities of shape ({self.num_classes},), got {tuple(probs.shape)}"
            )
        if not 0 <= label < self.num_classes:
            raise InvalidValueError(
                f"video {video}: label {label} is not one of the {self.num_classes} classes (0 to "
                f"{self.num_classes - 1}): the evaluated labels must come from the model's class list"
            )
        self.scores.setdefault(video, {})[view] = probs.detach().float().cpu()
        self.labels[video] = label

    def state(self) -> dict[str, Any]:
        """Plain data for gathering across processes."""
        return {"scores": self.scores, "labels": self.labels}

    def merge(self, state: dict[str, Any]) -> None:
        for video, views in state["scores"].items():
            self.scores.setdefault(video, {}).update(views)
        self.labels.update(state["labels"])

    def result(self) -> EvalResult:
        videos = sorted(self.scores)
        if not videos:
            raise InvalidValueError("no video was evaluated (all failed to decode, or the set is empty)")
        incomplete = [v for v in videos if len(self.scores[v]) != self.views_per_video]
        views = torch.stack([p for v in videos for p in self.scores[v].values()])
        view_labels = torch.tensor([self.labels[v] for v in videos for _ in self.scores[v]])
        mean = torch.stack([torch.stack(list(self.scores[v].values())).mean(0) for v in videos])
        labels = torch.tensor([self.labels[v] for v in videos])
        pred = mean.argmax(1)
        k = self.num_classes
        confusion = np.bincount((labels * k + pred).numpy(), minlength=k * k).reshape(k, k)
        totals = confusion.sum(1)
        per_class = [float(confusion[c, c] / totals[c]) if totals[c] else float("nan") for c in range(k)]
        return EvalResult(
            clip_top1=topk_correct(views, view_labels, 1).float().mean().item(),
            clip_top5=topk_correct(views, view_labels, 5).float().mean().item(),
            video_top1=topk_correct(mean, labels, 1).float().mean().item(),
            video_top5=topk_correct(mean, labels, 5).float().mean().item(),
            num_videos=len(videos),
            views_per_video=self.views_per_video,
            per_class_accuracy=per_class,
            confusion=confusion,
            incomplete_videos=incomplete,
        )
