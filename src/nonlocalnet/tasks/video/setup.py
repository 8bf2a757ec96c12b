"""From a :class:`~nonlocalnet.tasks.video.VideoConfig` to objects: the model (with its initial
weights), the samples and the datasets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nonlocalnet.data import (
    FrameCache,
    VideoClipDataset,
    VideoList,
    VideoSample,
    read_class_names,
    read_video_list,
    scan_class_folders,
)
from nonlocalnet.data.lists import class_folder_names
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.models import VideoResNet, build_video_model, inflate_2d_to_3d, load_named_weights
from nonlocalnet.models.model_file import load_model_file, read_model_file
from nonlocalnet.tasks.video.config import (
    CONFIG_KEYS,
    INIT_KINDS,
    ModelConfig,
    VideoDataConfig,
    stage_specs,
    video_resnet_spec,
)

__all__ = [
    "build_dataset",
    "build_model_from_config",
    "class_list_source",
    "initialise_model",
    "load_samples",
    "model_label",
]

log = logging.getLogger("nonlocalnet.data")


def _spec_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(overrides)
    if "stages" in out:
        out["stages"] = stage_specs(out["stages"], "model.overrides.stages")
    return out


def build_model_from_config(cfg: ModelConfig) -> VideoResNet:
    """The network ``cfg`` describes: a registry ``name`` (``build_video_model``, ``overrides.stages``
    may be a list of StageSpec mappings) or a whole ``spec`` (:class:`VideoResNetSpec` as data)."""
    try:
        if cfg.spec:
            return VideoResNet(
                video_resnet_spec({"backbone_norm": cfg.backbone_norm, **cfg.spec}),
                num_classes=cfg.num_classes,
                dropout=cfg.dropout,
                temporal_padding=cfg.temporal_padding,
            )
        if cfg.name is None:  # the config's checks make this a spec
            raise ConfigError("model: set model.name (a registry name) or model.spec (the whole network)")
        return build_video_model(
            cfg.name,
            cfg.num_classes,
            variant=cfg.variant,
            nonlocal_options=cfg.nonlocal_options or None,
            dropout=cfg.dropout,
            temporal_padding=cfg.temporal_padding,
            backbone_norm=cfg.backbone_norm,
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
    """Load the initial weights named by ``cfg.init``/``cfg.init_path``; returns a one-line report.
    The authors' weights (``caffe2``, or ``weights`` converted from them, or by name) are loaded
    only into the network they belong to (:func:`load_model_file`,
    :func:`~nonlocalnet.models.load_named_weights`): a mismatch names the ``model.*`` key."""
    if cfg.init == "none":
        return "random initialisation (MSRA convs, identity non-local blocks)"
    if cfg.init not in INIT_KINDS:  # a weights name (checked with the config): downloaded once
        return load_named_weights(model, cfg.init, keys=CONFIG_KEYS)
    path = Path(cfg.init_path or "")
    if not path.is_file():
        raise ConfigError(f"model.init_path: file not found: {path}")
    if cfg.init == "imagenet":
        state = read_model_file(path).state
        return f"inflated 2D weights from {path}: {inflate_2d_to_3d(model, state).summary()}"
    kind = {"caffe2": "caffe2", "weights": "safetensors"}.get(cfg.init, "checkpoint")
    return load_model_file(model, read_model_file(path, kinds=(kind,)), keys=CONFIG_KEYS)


def load_samples(
    data: VideoDataConfig,
    split: str,
    *,
    class_names: list[str] | None = None,
    class_source: str = "the model's classes",
) -> tuple[list[VideoSample], list[str]]:
    """The samples of ``split`` (``train`` or ``val``) and the class names.

    One class list labels every split: ``class_names`` (the training split's, or a trained
    model's; ``class_source`` says which, in messages), else the ``data.class_names`` file (both
    given: they must agree), else, for ``val``, the class folders of ``data.train_folder``. A
    label or class folder not in it is a :class:`ConfigError` naming the file (and line) and
    where the class list comes from, so a run stops before training, not at its first
    validation. Without any, a folder tree numbers its own sorted folders, a list's labels are
    integers or its class names sorted.

    A list's videos that are not found (Kinetics CSV rows) are logged; more than
    ``data.bad_data_threshold`` of them is an error. Files of a folder tree that are not videos
    are logged.
    """
    listed, folder = getattr(data, f"{split}_list"), getattr(data, f"{split}_folder")
    if bool(listed) == bool(folder):
        raise ConfigError(f"set exactly one of data.{split}_list and data.{split}_folder")
    names, source = _class_list(data, split, class_names, class_source)
    if folder:
        if not Path(folder).is_dir():
            raise ConfigError(f"data.{split}_folder: no such folder: {folder}")
        numbered = names is not None and not data.class_names and names == _numbered(len(names))
        if (names is None or numbered) and split != "train" and data.train_list:
            raise ConfigError(
                f"data.{split}_folder: its class folders cannot be matched with the integer labels of "
                "data.train_list; set data.class_names (one class name per line, in label order)"
            )
        try:
            found = scan_class_folders(folder, class_names=names)
        except ValueError as err:
            where = f" (the class list: {source})" if source else ""
            raise ConfigError(f"data.{split}_folder: {err}{where}") from None
        if found.skipped:
            first = found.skipped[0]
            log.warning(
                "data.%s_folder: %d files are not videos and were skipped (first: %s: %s); "
                "nonlocalnet check-data --folder %s lists them",
                split, len(found.skipped), first.path, first.reason, folder,
            )  # fmt: skip
        return found.samples, list(found.class_names or [])  # a folder tree always names its classes
    if not Path(listed).is_file():
        raise ConfigError(f"data.{split}_list: no such file: {listed}")
    try:
        read = read_video_list(listed, root=data.root, class_names=names)
    except ValueError as err:
        where = f" (the class list: {source})" if source else ""
        raise ConfigError(f"data.{split}_list: {err}{where}") from None
    _check_missing(read, data, split)
    if read.class_names is not None:
        return read.samples, read.class_names
    return read.samples, _numbered(max((s.label for s in read.samples), default=-1) + 1)


def _numbered(n: int) -> list[str]:
    """The class names of integer labels ``0 .. n-1``."""
    return [str(i) for i in range(n)]


def class_list_source(data: VideoDataConfig, names: list[str]) -> str:
    """Where the training split's class list ``names`` comes from, for messages."""
    if data.class_names:
        return f"data.class_names {data.class_names}"
    if data.train_folder:
        return f"the class folders of data.train_folder {data.train_folder}"
    if names == _numbered(len(names)):
        return f"the integer labels of data.train_list {data.train_list} (0 to {len(names) - 1})"
    return f"the {len(names)} class names of data.train_list {data.train_list}, sorted"


def _check_missing(read: VideoList, data: VideoDataConfig, split: str) -> None:
    """Log the listed videos that are not there; more than the bad-data threshold is an error."""
    if not read.missing:
        return
    count, total, first = len(read.missing), len(read.samples), read.missing[0]
    root = data.root or Path(getattr(data, f"{split}_list")).parent
    text = (
        f"data.{split}_list: {count} of {total} listed videos ({count / total:.2%}) are not under "
        f"data.root {root} (first: {first.where}: no {first.looked_for} in the root, its split or "
        "class folders)"
    )
    if count / total > data.bad_data_threshold:
        raise ConfigError(
            f"{text}, more than data.bad_data_threshold {data.bad_data_threshold:.2%}: set data.root to "
            "the videos' folder, or raise data.bad_data_threshold to go on without them "
            f"(nonlocalnet check-data --list {getattr(data, f'{split}_list')} --root {root} lists them)"
        )
    log.warning("%s; they count as bad videos (data.bad_data_threshold)", text)


def _class_list(
    data: VideoDataConfig, split: str, given: list[str] | None, given_source: str
) -> tuple[list[str] | None, str | None]:
    """The class list that labels ``split`` and where it comes from (for messages)."""
    if data.class_names and not Path(data.class_names).is_file():
        raise ConfigError(f"data.class_names: no such file: {data.class_names}")
    from_file = read_class_names(data.class_names) if data.class_names else None
    if given is not None:
        if from_file is not None and from_file != list(given):
            i = next((i for i, (a, b) in enumerate(zip(from_file, given, strict=False)) if a != b), None)
            diff = f"class {i} is {from_file[i]!r}, the other {given[i]!r}" if i is not None else "lengths"
            raise ConfigError(
                f"data.class_names: {data.class_names} lists {len(from_file)} classes that differ from "
                f"the {len(given)} of {given_source} ({diff})"
            )
        return list(given), given_source
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
    data: VideoDataConfig,
    samples: list[VideoSample],
    *,
    train: bool,
    seed: int,
    views: str = "video",
    frame_cache: FrameCache | None = None,
) -> VideoClipDataset:
    """The training dataset (one random clip per video) or a test dataset: ``views="video"``
    gives num_clips x num_crops views per video, ``"clip"`` one centre view."""
    if frame_cache is None and data.cache_frames:
        frame_cache = FrameCache()
    return VideoClipDataset(
        samples,
        mode="train" if train else "test",
        sampling=data.sampling(views),
        transform=data.transform(views),
        seed=seed,
        frame_cache=frame_cache,
        autorotate=data.autorotate,
        square_pixels=data.square_pixels,
    )
