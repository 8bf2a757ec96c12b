"""The video task's config: :class:`VideoConfig` (``task: video_classification``, the default)
adds the network (``model``), the clips (``data``) and the test views (``eval``) to the
engine's sections."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nonlocalnet.data import ClipSampling, TransformConfig
from nonlocalnet.engine.config import Config, ConfigError, DataConfig, EvalConfig, coerce
from nonlocalnet.models import VARIANTS, StageSpec, VideoResNetSpec
from nonlocalnet.models.resnet3d import BACKBONE_NORMS, TEMPORAL_PADDINGS

__all__ = [
    "CONFIG_KEYS",
    "INIT_KINDS",
    "ModelConfig",
    "VideoConfig",
    "VideoDataConfig",
    "VideoEvalConfig",
    "stage_specs",
    "video_resnet_spec",
]

_TRANSFORM, _SAMPLING = TransformConfig(), ClipSampling()  # the data layer's defaults, stated once


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

    def validate(self) -> None:
        _validate_init(self)
        _validate_model_choice(self)


@dataclass
class VideoDataConfig(DataConfig):
    """Where the videos are and how clips are sampled and transformed (the paper, Sec. 4; the
    defaults are :class:`~nonlocalnet.data.ClipSampling`'s and
    :class:`~nonlocalnet.data.TransformConfig`'s).

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
    clip_length: int = _SAMPLING.clip_length
    stride: int = _SAMPLING.stride
    num_clips: int = _SAMPLING.num_clips
    min_short: int = _TRANSFORM.min_short
    max_short: int = _TRANSFORM.max_short
    crop: int = _TRANSFORM.crop
    flip: bool = _TRANSFORM.flip
    test_short: int = _TRANSFORM.test_short
    test_crop: int = _TRANSFORM.test_crop
    num_crops: int = _TRANSFORM.num_crops
    mean: list = field(default_factory=lambda: list(_TRANSFORM.mean))
    std: list = field(default_factory=lambda: list(_TRANSFORM.std))
    cache_frames: bool = False
    autorotate: bool = True
    square_pixels: bool = True

    def validate(self) -> None:
        super().validate()
        if self.min_short > self.max_short:
            raise ConfigError(f"data.min_short {self.min_short} > data.max_short {self.max_short}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, 3) or not all(isinstance(v, int | float) for v in values):
                raise ConfigError(f"data.{key}: expected 1 or 3 numbers, got {values!r}")
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"data.std must be positive, got {self.std}")

    def transform(self, views: str = "video") -> TransformConfig:
        """The data layer's transform settings; another ``views`` than ``"video"``: one crop."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformConfig)}
        given |= {"mean": tuple(self.mean), "std": tuple(self.std)}
        return TransformConfig(**given | ({"num_crops": 1} if views != "video" else {}))

    def sampling(self, views: str = "video") -> ClipSampling:
        """The data layer's clip sampling; another ``views`` than ``"video"``: one clip per video."""
        clips = self.num_clips if views == "video" else 1
        return ClipSampling(clip_length=self.clip_length, stride=self.stride, num_clips=clips)


@dataclass
class VideoEvalConfig(EvalConfig):
    """Validation during training on ``views`` = ``clip`` (1 centre view per video, fast) or
    ``video`` (all clips x crops)."""

    views: str = "clip"


@dataclass
class VideoConfig(Config):
    """A video classification run (``task: video_classification``): the engine's sections
    (:class:`~nonlocalnet.engine.config.Config`) with the network, the clips and the views."""

    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    eval: VideoEvalConfig = field(default_factory=VideoEvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        **Config.CHOICES,
        "model.variant": VARIANTS,
        "model.backbone_norm": BACKBONE_NORMS,
        "model.temporal_padding": TEMPORAL_PADDINGS,
        "eval.views": ("clip", "video"),
    }
    POSITIVE: ClassVar[frozenset[str]] = Config.POSITIVE | {
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
    }

    def complete(self, data: Mapping[str, Any]) -> None:
        """A ``model.spec`` without a ``model.name``: the default name does not apply."""
        model = data.get("model")
        if self.model.spec and not (isinstance(model, dict) and "name" in model):
            self.model.name = None


CONFIG_KEYS = {
    "name": "model.name",
    "variant": "model.variant",
    "backbone_norm": "model.backbone_norm",
    "mode": "model.nonlocal_options.mode",
    "temporal_padding": "model.temporal_padding",
    "overrides": "model.overrides/nonlocal_options/spec",
}
"""How a config spells the settings :func:`~nonlocalnet.models.check_model_matches` names."""


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
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in stage.items()}
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
            coerce(f"{where}.{key}", value, hints[key])
    try:
        return VideoResNetSpec(**fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
