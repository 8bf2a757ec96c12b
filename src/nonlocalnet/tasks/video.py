"""Video classification (the paper's Kinetics task) as a :class:`~nonlocalnet.engine.task.Task`:
a :class:`~nonlocalnet.models.VideoResNet`, clips from video lists or class folders,
cross-entropy, and fully convolutional clip/video accuracy.

Imports the engine (config, set-up helpers, evaluation) and ``data``/``models``; the engine
reaches this class only through ``cfg.task`` (``video_classification``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nonlocalnet.data import ClipBatch, FrameCache, build_loader
from nonlocalnet.engine.config import Config, ConfigError
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.evaluate import evaluate_samples
from nonlocalnet.engine.layout import choose_memory_format
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.engine.predict import load_model_weights, predict_video
from nonlocalnet.engine.setup import (
    build_dataset,
    build_model_from_config,
    class_list_source,
    initialise_model,
    load_samples,
    model_label,
)
from nonlocalnet.engine.task import Evaluation, StepLoss

__all__ = ["VideoClassification"]


class VideoClassification:
    """The video task of ``cfg``: reads the sample lists when built, and checks there that
    ``model.num_classes`` is the class list's length and that every validation label is in the
    training split's class list (not after an epoch). ``frame_cache``: decoded videos shared
    with other runs in this process (else ``data.cache_frames`` decides)."""

    sample_noun = "video"
    # a resume may change the evaluation data and protocol, the video root, caching, and the
    # initial weights (the checkpoint's replace them)
    resume_free_settings = (
        "model.init",
        "model.init_path",
        "data.root",
        "data.val_list",
        "data.val_folder",
        "data.test_short",
        "data.test_crop",
        "data.num_clips",
        "data.num_crops",
        "data.cache_frames",
    )

    def __init__(self, cfg: Config, *, frame_cache: FrameCache | None = None) -> None:
        self.cfg = cfg
        self.train_metrics = ("top1",)
        self.label = model_label(cfg.model)
        self.train_samples, self.class_names = load_samples(cfg.data, "train")
        has_val = bool(cfg.data.val_list or cfg.data.val_folder)
        source = class_list_source(cfg.data, self.class_names)
        self.val_samples = (
            load_samples(cfg.data, "val", class_names=self.class_names, class_source=source)[0]
            if has_val
            else []
        )
        self.has_validation = bool(self.val_samples)
        self.validation_files = tuple(str(f) for f in (cfg.data.val_list, cfg.data.val_folder) if f)
        if cfg.model.num_classes != len(self.class_names):
            classes = len(self.class_names)
            raise ConfigError(
                f"model.num_classes is {cfg.model.num_classes} but the data has {classes} classes"
            )
        self.frame_cache = (
            frame_cache if frame_cache is not None or not cfg.data.cache_frames else FrameCache()
        )
        self._train_set = None

    def build_model(self) -> tuple[nn.Module, str]:
        model = build_model_from_config(self.cfg.model)
        return model, initialise_model(model, self.cfg.model)

    @property
    def train_set(self) -> torch.utils.data.Dataset:
        """One random clip per training video (built on first use)."""
        if self._train_set is None:
            self._train_set = build_dataset(
                self.cfg.data,
                self.train_samples,
                train=True,
                seed=self.cfg.seed,
                frame_cache=self.frame_cache,
            )
        return self._train_set

    def train_loader(
        self, *, distributed: tuple[int, int] | None, num_workers: int, epoch: int = 0, start_batch: int = 0
    ) -> DataLoader:
        return build_loader(
            self.train_set,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            num_workers=num_workers,
            distributed=distributed,
            drop_last=True,
            start_batch=start_batch,
            epoch=epoch,
        )

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def memory_format(self, model: nn.Module, device: torch.device) -> torch.memory_format:
        """``train.memory_format``; ``auto``: the faster of the two for this model (timed)."""
        choice = self.cfg.train.memory_format
        if choice == "contiguous":
            return torch.contiguous_format
        if choice == "channels_last":
            model.to(memory_format=torch.channels_last_3d)
            return torch.channels_last_3d
        example = torch.randn_like(self.example_input(device, torch.contiguous_format))
        return choose_memory_format(model, example)

    def model_input(
        self, batch: ClipBatch, device: torch.device, memory_format: torch.memory_format
    ) -> Tensor:
        return batch.video.to(device, non_blocking=True).contiguous(memory_format=memory_format)

    def example_input(self, device: torch.device, memory_format: torch.memory_format) -> Tensor:
        d = self.cfg.data
        clip = torch.zeros(1, 3, d.clip_length, d.crop, d.crop, device=device)
        return clip.contiguous(memory_format=memory_format)

    def placeholder_loss(
        self, net: nn.Module, device: torch.device, memory_format: torch.memory_format
    ) -> Tensor:
        """The logits of one all-zero clip (a classifier's forward needs no labels)."""
        return net(self.example_input(device, memory_format))

    def loss(
        self, net: nn.Module, batch: ClipBatch, device: torch.device, memory_format: torch.memory_format
    ) -> StepLoss:
        video = self.model_input(batch, device, memory_format)
        labels = batch.label.to(device, non_blocking=True)
        logits = net(video)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        return StepLoss(loss, {"top1": float((logits.argmax(1) == labels).sum())})

    def evaluate(
        self, model: nn.Module, ctx: DistContext, *, memory_format: torch.memory_format
    ) -> Evaluation:
        """Clip and video accuracy on the validation videos with ``eval.views`` views each."""
        result, bad = evaluate_samples(
            model,
            self.cfg,
            ctx,
            self.val_samples,
            views=self.cfg.eval.views,
            memory_format=memory_format,
            frame_cache=self.frame_cache,
        )
        record = {**result.to_dict(), "bad_videos": [b.path for b in bad]}
        record.pop("per_class_accuracy")
        return Evaluation(record, result.video_top1, [b.path for b in bad])

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names)}

    def write_run_files(self, folder: Path) -> None:
        (folder / "classes.txt").write_text("\n".join(self.class_names) + "\n")

    def load_weights(self, model: nn.Module, path: str | Path) -> str:
        return load_model_weights(model, read_model_file(path), self.cfg)

    def predict(
        self, model: nn.Module, inputs: Sequence[Any], *, device: torch.device
    ) -> list[dict[str, Any]]:
        """The top-5 classes of each video (a path) over the test views of ``cfg.data``."""
        results = []
        for path in inputs:
            pred = predict_video(model, path, self.cfg, self.class_names)  # type: ignore[arg-type]
            top = [{"label": name, "probability": p} for name, p in pred.top]
            results.append({"path": pred.path, "top": top, "views": pred.views})
        return results
