"""Training/evaluation configuration: typed dataclasses, YAML files, ``key=value`` overrides.

A config file is YAML with the sections below; every key is checked (unknown keys and wrong
types are errors naming the key). ``base: other.yaml`` inherits from another file (relative to
the file), so one recipe file can serve every model.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nonlocalnet.atomic import atomic_write_bytes
from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.models import VARIANTS, StageSpec, VideoResNetSpec
from nonlocalnet.models.resnet3d import BACKBONE_NORMS, TEMPORAL_PADDINGS

__all__ = [
    "INIT_KINDS",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DetectionConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "video_resnet_spec",
]


log = logging.getLogger("nonlocalnet.config")


class ConfigError(InvalidValueError):
    """A config file or override is wrong; the message names the key."""


@dataclass
class ModelConfig:
    """Which network to build (``nonlocalnet.models.build_model``) and how to initialise it.

    ``init``: ``none``; ``imagenet`` (a 2D ResNet state dict, torchvision or Caffe2 names,
    inflated to 3D); ``caffe2`` (the authors' released ``.pkl``); ``weights`` (our safetensors);
    ``checkpoint`` (a training checkpoint's model); each of these reads the file ``init_path``.
    Or a weights name (``nonlocalnet weights``, e.g. ``i3d_nonlocal_32x2_IN_pretrain_400k`` or
    ``resnet50_imagenet1k_v1``), with ``init_path`` unset: downloaded once into the weights
    cache (``$NONLOCALNET_CACHE_DIR``, else ``$TORCH_HOME/hub/checkpoints``) and loaded
    (:func:`~nonlocalnet.models.load_named_weights`). ``overrides``: fields of VideoResNetSpec.

    ``spec``: the whole network as a :class:`~nonlocalnet.models.VideoResNetSpec` mapping
    (``stages`` a list of :class:`~nonlocalnet.models.StageSpec` mappings) instead of a registry
    ``name``; ``name`` must then be unset (``null``), and ``variant``, ``nonlocal_options`` and
    ``overrides``, which describe registry models, keep their defaults (the block's options go in
    ``spec.nonlocal_options``). ``num_classes``, ``dropout``, ``backbone_norm`` and
    ``temporal_padding`` apply to both. ``nonlocal_options``: fields of
    :class:`~nonlocalnet.layers.NonLocalOptions` over the variant's block (``{mode: dot_product}``).
    """

    name: str | None = "c2d_nl5_r50"
    num_classes: int = 400
    variant: str = "paper"
    nonlocal_options: dict = field(default_factory=dict)
    dropout: float = 0.5
    backbone_norm: str = "batchnorm"
    temporal_padding: str = "zeros"
    overrides: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    init: str = "none"
    init_path: str | None = None


@dataclass
class DataConfig:
    """Where the videos are and how clips are sampled and transformed (the paper, Sec. 4).

    Give ``train_list``/``val_list`` (``path label`` or CSV lines) or ``train_folder``/
    ``val_folder`` (one folder per class). ``root``: base for relative paths in list files.
    ``autorotate``: turn frames upright by the video's display matrix (ffmpeg's default);
    ``square_pixels``: resample non-square pixels to the display aspect ratio (as players show
    them; false keeps the coded pixels, as ffmpeg's command line, PySlowFast and mmaction2 do).
    """

    train_list: str | None = None
    val_list: str | None = None
    train_folder: str | None = None
    val_folder: str | None = None
    root: str | None = None
    class_names: str | None = None
    clip_length: int = 32
    stride: int = 2
    num_clips: int = 10
    min_short: int = 256
    max_short: int = 320
    crop: int = 224
    flip: bool = True
    test_short: int = 256
    test_crop: int = 256
    num_crops: int = 3
    mean: list = field(default_factory=lambda: [114.75, 114.75, 114.75])
    std: list = field(default_factory=lambda: [57.375, 57.375, 57.375])
    num_workers: int = 4
    bad_data_threshold: float = 0.01
    cache_frames: bool = False
    autorotate: bool = True
    square_pixels: bool = True


@dataclass
class OptimConfig:
    """SGD with (Nesterov) momentum; lr scaled linearly with the total batch; step schedule as
    fractions of the iterations (150k and 300k of 400k in the paper); linear warm-up.
    ``nonlocal_lr_mult`` multiplies the non-local blocks' learning rate (1 in the paper; a block
    that starts as the identity leaves it sooner with more)."""

    base_lr: float = 0.01
    base_batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    lr_milestones: list = field(default_factory=lambda: [0.375, 0.75])
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    nonlocal_lr_mult: float = 1.0


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is per process; an optimiser step sees
    ``batch_size * grad_accum * world_size`` clips. Give ``iterations`` (optimiser steps) or
    ``epochs``, not both (an override of one replaces the config file's other). ``amp``:
    ``none``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA)."""

    batch_size: int = 8
    grad_accum: int = 1
    iterations: int = 0
    epochs: int = 0
    amp: str = "none"
    precise_bn_batches: int = 0
    memory_format: str = "contiguous"
    log_every: int = 20
    progress: bool = True
    sync_bn: bool = False
    deterministic: bool = False
    dist_timeout_s: float = 300.0


@dataclass
class CheckpointConfig:
    """Checkpoints every ``every_iters`` steps (0: at the end of each epoch only), the last
    ``keep_last`` kept, plus ``best.pt`` by validation accuracy."""

    every_iters: int = 0
    keep_last: int = 3
    keep_best: bool = True


@dataclass
class EvalConfig:
    """Validation during training every ``every_epochs`` epochs (0: only at the end), on
    ``views`` = ``clip`` (1 centre view per video, fast) or ``video`` (all clips x crops)."""

    every_epochs: int = 1
    views: str = "clip"
    batch_size: int = 4


@dataclass
class DetectionConfig:
    """The detector and its COCO-format data, for ``task: detection``
    (:func:`nonlocalnet.detection.build_detector`; the video ``model``/``data`` settings do not
    apply, except ``data.num_workers`` and ``data.bad_data_threshold``).

    ``model``: a detector name (``nonlocalnet models``); ``num_classes`` counts the background
    as torchvision does (0: the weights' class count, else the label space's: the data's
    categories + 1, or the largest category id + 1). ``weights``: a whole detector's state
    dict file (torchvision's COCO ``.pth`` loads into the ``_nl`` models with only the block's
    keys new; predictors of another class count are re-initialised); ``weights_backbone``: an
    ImageNet ResNet state dict file. Either may also be a weights name (``nonlocalnet weights``:
    ``maskrcnn_resnet50_fpn_coco_v1``, ``resnet50_imagenet1k_v1``...), downloaded once into the
    weights cache. ``min_size``: one short side, or
    several for multi-scale training (one drawn per image, by torchvision's
    ``GeneralizedRCNNTransform``); evaluation uses the last.
    ``oks_sigmas``: one per keypoint (COCO's 17 when unset and the data has 17).
    ``keypoint_flip_map``: pairs of keypoint names a horizontal flip swaps (detectron2's
    ``keypoint_flip_map``; unset: paired by their left/right names, an ambiguous set is an error).
    ``min_keypoints_per_image``: keypoint training leaves out the images with fewer visible
    keypoints (torchvision's reference: 10; 0 keeps every image with an object).
    ``model_options``: more torchvision constructor keywords (``rpn_batch_size_per_image``...).
    ``nonlocal_options``: fields of :class:`~nonlocalnet.layers.NonLocalOptions` over the
    detectors' block (:data:`~nonlocalnet.detection.DETECTOR_BLOCK`: ``norm: none``, ...).
    ``labels``: what a class index means (:mod:`nonlocalnet.detection.labels`): ``contiguous``
    (label k = the k-th category by id, ``K + 1`` classes), ``category_ids`` (label = the COCO
    category id, max id + 1 classes, as torchvision's COCO weights) or ``auto`` (chosen from
    ``num_classes`` or the weights' class count; an ambiguous count is an error).
    """

    model: str = "maskrcnn_r50_fpn_nl"
    num_classes: int = 0
    labels: str = "auto"
    nonlocal_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    weights: str | None = None
    weights_backbone: str | None = None
    trainable_backbone_layers: int | None = None
    min_size: list = field(default_factory=lambda: [800])
    max_size: int = 1333
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    flip: bool = True
    aspect_ratio_grouping: bool = True
    oks_sigmas: list | None = None
    keypoint_flip_map: list | None = None
    min_keypoints_per_image: int = 10
    mask_threshold: float = 0.5


@dataclass
class Config:
    """The whole run. ``output_dir`` holds the resolved config, checkpoints, logs and figures.
    ``task`` chooses what is trained (:data:`nonlocalnet.engine.task.TASKS`)."""

    task: str = "video_classification"
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


_CHOICES = {
    "model.variant": VARIANTS,
    "model.backbone_norm": BACKBONE_NORMS,
    "model.temporal_padding": TEMPORAL_PADDINGS,
    "train.amp": ("none", "bf16", "fp16"),
    "train.memory_format": ("contiguous", "channels_last", "auto"),
    "eval.views": ("clip", "video"),
    "detection.labels": ("auto", "contiguous", "category_ids"),
}
_POSITIVE = {
    "model.num_classes",
    "data.clip_length",
    "data.stride",
    "data.num_clips",
    "data.min_short",
    "data.max_short",
    "data.crop",
    "data.test_short",
    "data.test_crop",
    "data.num_crops",
    "optim.base_batch_size",
    "train.batch_size",
    "train.grad_accum",
    "train.log_every",
    "checkpoint.keep_last",
    "eval.batch_size",
    "detection.max_size",
}

_NON_NEGATIVE = {
    "data.num_workers",
    "optim.base_lr",  # 0: a frozen run (tests, BN statistics only)
    "optim.lr_gamma",
    "optim.momentum",
    "optim.weight_decay",
    "optim.weight_decay_norm",
    "optim.warmup_iters",
    "optim.warmup_factor",
    "optim.nonlocal_lr_mult",  # 0: the blocks stay as they are (identity at init)
    "train.precise_bn_batches",
    "checkpoint.every_iters",
    "eval.every_epochs",
    "detection.min_keypoints_per_image",
}
_ABOVE_ZERO = {"train.dist_timeout_s"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _fill(obj: Any, data: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys here: {names}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of settings, got {value!r}")
            _fill(current, value, f"{full}.")
            continue
        value = _coerce(full, value, hints[key])
        if full in _CHOICES and value not in _CHOICES[full]:
            raise ConfigError(f"{full}: {value!r} is not one of {_CHOICES[full]}")
        if full in _POSITIVE and value < 1:
            raise ConfigError(f"{full}: must be >= 1, got {value!r}")
        if full in _NON_NEGATIVE and not value >= 0:  # NaN too
            raise ConfigError(f"{full}: must be >= 0, got {value!r}")
        if full in _ABOVE_ZERO and not value > 0:  # NaN too
            raise ConfigError(f"{full}: must be > 0, got {value!r}")
        setattr(obj, key, value)


def _validate(cfg: Config) -> None:
    if cfg.train.iterations < 0 or cfg.train.epochs < 0:
        raise ConfigError("train.iterations and train.epochs must be >= 0")
    if cfg.train.iterations and cfg.train.epochs:
        raise ConfigError(
            f"train.iterations ({cfg.train.iterations}) and train.epochs ({cfg.train.epochs}) are both "
            "set: give only one (an override of one on the command line replaces the file's other)"
        )
    if cfg.data.min_short > cfg.data.max_short:
        raise ConfigError(f"data.min_short {cfg.data.min_short} > data.max_short {cfg.data.max_short}")
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if len(values) not in (1, 3) or not all(isinstance(v, int | float) for v in values):
            raise ConfigError(f"data.{key}: expected 1 or 3 numbers, got {values!r}")
    if any(v <= 0 for v in cfg.data.std):
        raise ConfigError(f"data.std must be positive, got {cfg.data.std}")
    if not 0.0 <= cfg.data.bad_data_threshold <= 1.0:
        raise ConfigError(f"data.bad_data_threshold must be in [0, 1], got {cfg.data.bad_data_threshold}")
    if any(not isinstance(m, int | float) or not 0 < m < 1 for m in cfg.optim.lr_milestones):
        raise ConfigError(f"optim.lr_milestones: expected fractions in (0, 1), got {cfg.optim.lr_milestones}")
    _validate_init(cfg.model)
    _validate_model_choice(cfg.model)
    _validate_detection(cfg.detection)
    from nonlocalnet.engine.task import TASKS  # the task table imports this module

    if cfg.task not in TASKS:
        raise ConfigError(f"task: {cfg.task!r} is not one of {sorted(TASKS)}")


def _validate_detection(det: DetectionConfig) -> None:
    """The detection section's values (the detector name is checked when the task is built)."""
    if det.num_classes == 1 or det.num_classes < 0:
        raise ConfigError(
            f"detection.num_classes: {det.num_classes} (it counts the background: >= 2, or 0 for the "
            "weights' class count, else the data's by detection.labels)"
        )
    sizes = det.min_size
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise ConfigError(f"detection.min_size: expected a list of positive ints, got {sizes!r}")
    if det.trainable_backbone_layers is not None and not 0 <= det.trainable_backbone_layers <= 5:
        raise ConfigError(
            f"detection.trainable_backbone_layers: expected 0 to 5, got {det.trainable_backbone_layers}"
        )
    if not 0.0 <= det.mask_threshold <= 1.0:
        raise ConfigError(f"detection.mask_threshold: expected a value in [0, 1], got {det.mask_threshold}")
    if det.oks_sigmas is not None and not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in det.oks_sigmas
    ):
        raise ConfigError(f"detection.oks_sigmas: expected positive numbers, got {det.oks_sigmas!r}")
    pairs = det.keypoint_flip_map
    if pairs is not None and not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) and p[0] != p[1]
        for p in pairs
    ):
        raise ConfigError(
            f"detection.keypoint_flip_map: expected pairs of two different keypoint names, e.g. "
            f"[[l_eye, r_eye], [l_ear, r_ear]], got {pairs!r}"
        )
    for split in ("train", "val"):
        images, annotations = getattr(det, f"{split}_images"), getattr(det, f"{split}_annotations")
        if bool(images) != bool(annotations):
            raise ConfigError(
                f"detection.{split}_images and detection.{split}_annotations go together: set both or neither"
            )


INIT_KINDS = ("none", "imagenet", "caffe2", "weights", "checkpoint")
"""The file kinds ``model.init`` reads from ``model.init_path``; any other value names weights."""


def _validate_init(model: ModelConfig) -> None:
    """``model.init``: a kind with ``model.init_path``, or a weights name without it."""
    from nonlocalnet.models.zoo import get_weights, is_weights_name

    if model.init in INIT_KINDS:
        if model.init != "none" and not model.init_path:
            raise ConfigError(f"model.init is {model.init!r} but model.init_path is not set")
        return
    if not is_weights_name(model.init):
        try:
            get_weights(model.init)
        except ValueError as err:
            raise ConfigError(
                f"model.init: {model.init!r} is neither one of {INIT_KINDS} (with model.init_path) nor a "
                f"weights name: {err}"
            ) from None
    if model.init_path:
        raise ConfigError(
            f"model.init names the weights {model.init!r}, so model.init_path ({model.init_path!r}) must "
            "stay unset (a file goes with model.init: caffe2, weights, imagenet or checkpoint)"
        )


def _validate_model_choice(model: ModelConfig) -> None:
    """A registry ``name`` or a whole ``spec``, not both; a spec is checked here."""
    if not model.spec:
        if model.name is None:
            raise ConfigError("model: set model.name (a registry name) or model.spec (the whole network)")
        return
    if model.name is not None:
        raise ConfigError(
            f"model.name ({model.name!r}) and model.spec are both set: give one (model.name: null "
            "to describe the network by model.spec alone)"
        )
    registry_only: dict[str, Any] = {"variant": model.variant} if model.variant != "paper" else {}
    registry_only |= {k: getattr(model, k) for k in ("nonlocal_options", "overrides") if getattr(model, k)}
    if registry_only:
        raise ConfigError(
            f"model.spec gives the whole network, so {', '.join(f'model.{k}' for k in registry_only)} "
            "(registry-model settings) must stay unset; put the block's options in "
            "model.spec.nonlocal_options"
        )
    video_resnet_spec(model.spec, "model.spec")


def _stage_spec(stage: Any, where: str) -> StageSpec:
    if not isinstance(stage, dict):
        raise ConfigError(f"{where}: expected a mapping of StageSpec fields, got {stage!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in stage.items()}
    try:
        return StageSpec(**fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def stage_specs(stages: Any, where: str) -> tuple[StageSpec, ...]:
    """A list of :class:`StageSpec` mappings (YAML lists become tuples) as StageSpecs."""
    if not isinstance(stages, list | tuple):
        raise ConfigError(f"{where}: expected a list of stage mappings, got {stages!r}")
    return tuple(_stage_spec(stage, f"{where}[{i}]") for i, stage in enumerate(stages))


def video_resnet_spec(data: dict, where: str = "model.spec") -> VideoResNetSpec:
    """A :class:`VideoResNetSpec` from plain data (``model.spec``); errors name the field."""
    names = [f.name for f in dataclasses.fields(VideoResNetSpec)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; VideoResNetSpec fields: {names}")
    if "stages" not in data:
        raise ConfigError(f"{where}.stages: required (a list of StageSpec mappings)")
    fields = dict(data, stages=stage_specs(data["stages"], f"{where}.stages"))
    hints = typing.get_type_hints(VideoResNetSpec)
    for key, value in fields.items():
        if key == "nonlocal_options" and not isinstance(value, dict):
            raise ConfigError(f"{where}.nonlocal_options: expected a mapping, got {value!r}")
        if key not in ("stages", "nonlocal_options"):
            _coerce(f"{where}.{key}", value, hints[key])
    try:
        return VideoResNetSpec(**fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def check_config(cfg: Any, call: str) -> None:
    """Raise ``TypeError`` unless ``cfg`` is a :class:`Config`; ``call`` shows the signature."""
    if not isinstance(cfg, Config):
        raise InvalidTypeError(
            f"{call}: cfg must be a Config (from load_config(path) or config_from_dict(data)), "
            f"got {type(cfg).__name__}"
        )


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from nested plain data."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = Config()
    _fill(cfg, data, "")
    model = data.get("model")
    if cfg.model.spec and not (isinstance(model, dict) and "name" in model):
        cfg.model.name = None  # a spec without a name: the default name does not apply
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join(map(str, (*seen, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _merge(_read_yaml((path.parent / base).resolve(), (*seen, path)), data)
    # a file that gives the run's length in epochs replaces its base's iterations (and the
    # other way round), as a command-line override does
    for section, key in _EXCLUSIVE:
        mine = data.get(section)
        if not isinstance(mine, dict) or mine.get(key) in (0, None, False):
            continue
        for other_section, other in _EXCLUSIVE:
            if other_section == section and other != key and other not in mine and merged[section].get(other):
                merged[section][other] = 0
    return merged


# settings of which only one may be non-zero: an override of one resets the others of ``data``
_EXCLUSIVE = (("train", "iterations"), ("train", "epochs"))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to nested plain data.

    The length of a run is given once: a non-zero ``train.epochs`` override resets the
    ``train.iterations`` of ``data`` to 0, and the other way round (the command line wins over
    the file); both overridden non-zero is an error when the config is validated."""
    out = _merge({}, data)
    given: dict[tuple[str, ...], Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
        given[tuple(parts)] = value
    for key in _EXCLUSIVE:
        if given.get(key, 0) in (0, None, False):
            continue
        section = out.get(key[0])
        for other in _EXCLUSIVE:
            if other != key and other not in given and isinstance(section, dict) and section.get(other[1]):
                log.info(
                    "%s=%r on the command line replaces %s=%r of the config",
                    ".".join(key),
                    given[key],
                    ".".join(other),
                    section[other[1]],
                )
                section[other[1]] = 0
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (following ``base:``), apply overrides, validate."""
    data = _read_yaml(Path(path).resolve()) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode())
