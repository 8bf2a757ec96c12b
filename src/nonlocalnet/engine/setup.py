"""From a :class:`Config` to objects: the model (with its initial weights) and the datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nonlocalnet.data import (
    ClipSampling,
    FrameCache,
    TransformConfig,
    VideoClipDataset,
    VideoSample,
    read_class_names,
    read_video_list,
    scan_class_folders,
)
from nonlocalnet.data.lists import class_folder_names
from nonlocalnet.engine.config import ConfigError, DataConfig, ModelConfig, stage_specs, video_resnet_spec
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.models import VideoResNet, build_model, inflate_2d_to_3d, load_caffe2_checkpoint

__all__ = ["build_dataset", "build_model_from_config", "initialise_model", "load_samples", "model_label"]


def _spec_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(overrides)
    if "stages" in out:
        out["stages"] = stage_specs(out["stages"], "model.overrides.stages")
    return out


def build_model_from_config(cfg: ModelConfig) -> VideoResNet:
    """The network ``cfg`` describes: a registry ``name`` (``build_model``, ``overrides.stages``
    may be a list of StageSpec mappings) or a whole ``spec`` (:class:`VideoResNetSpec` as data)."""
    try:
        if cfg.spec:
            return VideoResNet(
                video_resnet_spec(cfg.spec),
                num_classes=cfg.num_classes,
                dropout=cfg.dropout,
                temporal_padding=cfg.temporal_padding,
                norm=cfg.norm,
            )
        return build_model(
            cfg.name,
            cfg.num_classes,
            variant=cfg.variant,
            nonlocal_mode=cfg.nonlocal_mode,
            nonlocal_options=cfg.nonlocal_options or None,
            dropout=cfg.dropout,
            temporal_padding=cfg.temporal_padding,
            norm=cfg.norm,
            **_spec_overrides(cfg.overrides),
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model: {err}") from None


def model_label(cfg: ModelConfig) -> str:
    """The model's name in logs and figures: its registry name, or ``custom spec``."""
    return cfg.name if cfg.name is not None else "custom spec"


def initialise_model(model: VideoResNet, cfg: ModelConfig) -> str:
    """Load the initial weights named by ``cfg.init``/``cfg.init_path``; returns a one-line report."""
    if cfg.init == "none":
        return "random initialisation (MSRA convs, identity non-local blocks)"
    path = Path(cfg.init_path or "")
    if not path.is_file():
        raise ConfigError(f"model.init_path: file not found: {path}")
    if cfg.init == "imagenet":
        state = read_model_file(path).state
        return f"inflated 2D weights from {path}: {inflate_2d_to_3d(model, state).summary()}"
    if cfg.init == "caffe2":
        report = load_caffe2_checkpoint(model, read_model_file(path, kinds=("caffe2",)).state)
        return f"released Caffe2 weights from {path}: {report.summary()}"
    if cfg.init == "weights":
        model.load_state_dict(read_model_file(path, kinds=("safetensors",)).state)
        return f"weights from {path}"
    model.load_state_dict(read_model_file(path, kinds=("checkpoint",)).state)
    return f"model weights of training checkpoint {path}"


def load_samples(
    data: DataConfig, split: str, *, class_names: list[str] | None = None
) -> tuple[list[VideoSample], list[str]]:
    """The samples of ``split`` (``train`` or ``val``) and the class names.

    One class list labels every split: ``class_names`` (e.g. a trained model's), else the
    ``data.class_names`` file (both given: they must agree), else, for ``val``, the class folders
    of ``data.train_folder``; a class folder missing from it is an error. Without any, a folder
    tree numbers its own sorted folders and a list's labels are integers.
    """
    listed, folder = getattr(data, f"{split}_list"), getattr(data, f"{split}_folder")
    if bool(listed) == bool(folder):
        raise ConfigError(f"set exactly one of data.{split}_list and data.{split}_folder")
    names, source = _class_list(data, split, class_names)
    if folder:
        if not Path(folder).is_dir():
            raise ConfigError(f"data.{split}_folder: no such folder: {folder}")
        if names is None and split != "train" and data.train_list:
            raise ConfigError(
                f"data.{split}_folder: its class folders cannot be matched with the integer labels of "
                "data.train_list; set data.class_names (one class name per line, in label order)"
            )
        try:
            samples, found = scan_class_folders(folder, class_names=names)
        except ValueError as err:
            where = f" (the class list: {source})" if source else ""
            raise ConfigError(f"data.{split}_folder: {err}{where}") from None
        return samples, found
    if not Path(listed).is_file():
        raise ConfigError(f"data.{split}_list: no such file: {listed}")
    samples = read_video_list(listed, root=data.root, class_names=names)
    if names is None:
        names = [str(i) for i in range(max((s.label for s in samples), default=-1) + 1)]
    return samples, names


def _class_list(data: DataConfig, split: str, given: list[str] | None) -> tuple[list[str] | None, str | None]:
    """The class list that labels ``split`` and where it comes from (for messages)."""
    if data.class_names and not Path(data.class_names).is_file():
        raise ConfigError(f"data.class_names: no such file: {data.class_names}")
    from_file = read_class_names(data.class_names) if data.class_names else None
    if given is not None:
        if from_file is not None and from_file != list(given):
            i = next((i for i, (a, b) in enumerate(zip(from_file, given, strict=False)) if a != b), None)
            diff = f"class {i} is {from_file[i]!r}, the model's {given[i]!r}" if i is not None else "lengths"
            raise ConfigError(
                f"data.class_names: {data.class_names} lists {len(from_file)} classes that differ from "
                f"the model's {len(given)} ({diff})"
            )
        return list(given), "the model's classes"
    if from_file is not None:
        return from_file, f"data.class_names {data.class_names}"
    if split != "train" and data.train_folder:
        if not Path(data.train_folder).is_dir():
            raise ConfigError(f"data.train_folder: no such folder: {data.train_folder}")
        try:
            names = class_folder_names(data.train_folder)
        except ValueError as err:
            raise ConfigError(f"data.train_folder: {err}") from None
        return names, f"the folders of data.train_folder {data.train_folder}"
    return None, None


def build_dataset(
    data: DataConfig,
    samples: list[VideoSample],
    *,
    train: bool,
    seed: int,
    views: str = "video",
    frame_cache: FrameCache | None = None,
) -> VideoClipDataset:
    """The training dataset (one random clip per video) or a test dataset: ``views="video"``
    gives num_clips x num_crops views per video, ``"clip"`` one centre view."""
    transform = TransformConfig(
        min_short=data.min_short,
        max_short=data.max_short,
        crop=data.crop,
        flip=data.flip,
        test_short=data.test_short,
        test_crop=data.test_crop,
        num_crops=data.num_crops if views == "video" else 1,
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
    sampling = ClipSampling(
        clip_length=data.clip_length, stride=data.stride, num_clips=data.num_clips if views == "video" else 1
    )
    mode = "train" if train else "test"
    if frame_cache is None and data.cache_frames:
        frame_cache = FrameCache()
    return VideoClipDataset(
        samples, mode=mode, sampling=sampling, transform=transform, seed=seed, frame_cache=frame_cache
    )
