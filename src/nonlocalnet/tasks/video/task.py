"""Video classification (the paper's Kinetics task) as a :class:`~nonlocalnet.engine.task.Task`:
a :class:`~nonlocalnet.models.VideoResNet`, clips from video lists or class folders,
cross-entropy, and fully convolutional clip/video accuracy.

Imports the engine (config, distributed helpers) and ``data``/``models``; the engine reaches
this class only through ``cfg.task`` (``video_classification``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nonlocalnet.data import (
    ClipBatch,
    EpochSampler,
    FrameCache,
    VideoClipDataset,
    VideoSample,
    build_loader,
    read_class_names,
)
from nonlocalnet.engine.config import ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.task import Evaluation, StepLoss
from nonlocalnet.errors import InvalidTypeError
from nonlocalnet.models import VideoResNet
from nonlocalnet.models.model_file import read_model_file
from nonlocalnet.tasks.video.config import VideoConfig
from nonlocalnet.tasks.video.evaluate import score_samples
from nonlocalnet.tasks.video.memory_format import choose_memory_format
from nonlocalnet.tasks.video.predict import load_model_weights, predict_video
from nonlocalnet.tasks.video.setup import (
    build_dataset,
    build_model_from_config,
    class_list_source,
    initialise_model,
    load_samples,
    model_label,
)

__all__ = ["VideoClassification"]


class VideoClassification:
    """The video task of ``cfg``: reads the sample lists when built, and checks there that
    ``model.num_classes`` is the class list's length and that every validation label is in the
    training split's class list (not after an epoch). Without training data (``data.train_list``
    and ``data.train_folder`` unset: evaluating or predicting with trained weights) the classes
    are ``data.class_names``'s, else ``0 .. num_classes - 1``. ``frame_cache``: decoded videos
    shared with other runs in this process (else ``data.cache_frames`` decides)."""

    sample_noun = "video"
    train_metrics = ("top1",)
    # what a resume may change in the task's sections: where the weights and videos are, how
    # the model is tested
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

    def __init__(self, cfg: VideoConfig, *, frame_cache: FrameCache | None = None) -> None:
        check_config(cfg, "VideoClassification(cfg)", VideoConfig)
        self.cfg = cfg
        self.label = model_label(cfg.model)
        self.train_samples: list[VideoSample] = []
        self.val_samples: list[VideoSample] = []
        self.class_names = self._read_samples() if self._has_train_data else self._given_class_names()
        if cfg.model.num_classes != len(self.class_names):
            classes = len(self.class_names)
            raise ConfigError(
                f"model.num_classes is {cfg.model.num_classes} but the data has {classes} classes"
            )
        self.has_validation = bool(self.val_samples)
        self.validation_files = tuple(str(f) for f in (cfg.data.val_list, cfg.data.val_folder) if f)
        self.frame_cache = (
            frame_cache if frame_cache is not None or not cfg.data.cache_frames else FrameCache()
        )
        self._train_set: VideoClipDataset | None = None

    @property
    def _has_train_data(self) -> bool:
        return bool(self.cfg.data.train_list or self.cfg.data.train_folder)

    def _read_samples(self) -> list[str]:
        """The training and validation samples; returns the class names."""
        data = self.cfg.data
        self.train_samples, names = load_samples(data, "train")
        if data.val_list or data.val_folder:
            source = class_list_source(data, names)
            self.val_samples = load_samples(data, "val", class_names=names, class_source=source)[0]
        return names

    def _given_class_names(self) -> list[str]:
        path = self.cfg.data.class_names
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"data.class_names: no such file: {path}")
            return read_class_names(path)
        return [str(i) for i in range(self.cfg.model.num_classes)]

    def build_model(self) -> tuple[nn.Module, str]:
        model = build_model_from_config(self.cfg.model)
        return model, initialise_model(model, self.cfg.model)

    @property
    def train_set(self) -> VideoClipDataset:
        """One random clip per training video (built on first use)."""
        if not self._has_train_data:
            raise ConfigError("training needs data.train_list or data.train_folder")
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
        """Tell the loader's :class:`~nonlocalnet.data.EpochSampler` the epoch."""
        if not isinstance(loader.sampler, EpochSampler):
            raise InvalidTypeError(
                f"expected a loader of train_loader() (an EpochSampler), got {type(loader.sampler).__name__}"
            )
        loader.sampler.set_epoch(epoch)

    def memory_format(self, model: nn.Module, device: torch.device) -> torch.memory_format:
        """``train.memory_format``: ``contiguous``, ``channels_last`` (3-D), or ``auto`` (both
        timed on an example clip, :func:`choose_memory_format`); ``model`` is left in it."""
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
        scores, bad = score_samples(
            _video_resnet(model),
            self.cfg,
            ctx,
            self.val_samples,
            self.cfg.eval.views,
            memory_format=memory_format,
            frame_cache=self.frame_cache,
        )
        result = scores.result()
        record = {**result.to_dict(), "bad_videos": [b.path for b in bad]}
        record.pop("per_class_accuracy")
        return Evaluation(record, result.video_top1, [b.path for b in bad])

    def load_weights(self, model: nn.Module, path: str | os.PathLike) -> str:
        """A checkpoint, safetensors weights or the authors' ``.pkl`` into ``model``, checked
        against ``cfg.model`` (:func:`~nonlocalnet.tasks.video.predict.load_model_weights`)."""
        return load_model_weights(model, read_model_file(path), self.cfg)

    def predict(
        self, model: nn.Module, inputs: Sequence[str | os.PathLike], *, device: torch.device
    ) -> list[dict[str, Any]]:
        """The top-5 classes of each video file (the softmax over the test views of ``cfg.data``,
        averaged): ``{"path", "top": [{"label", "probability"}, ...], "views"}``."""
        net = _video_resnet(model).to(device)
        out = []
        for path in inputs:
            found = predict_video(net, Path(path), self.cfg, self.class_names)
            top = [{"label": name, "probability": p} for name, p in found.top]
            out.append({"path": found.path, "top": top, "views": found.views})
        return out

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names)}

    def write_run_files(self, folder: Path) -> None:
        (folder / "classes.txt").write_text("\n".join(self.class_names) + "\n")


def _video_resnet(model: nn.Module) -> VideoResNet:
    """``model`` itself, or the network a DDP / compile wrapper holds."""
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    if not isinstance(inner, VideoResNet):
        raise InvalidTypeError(f"the video task evaluates a VideoResNet, got {type(model).__name__}")
    return inner
