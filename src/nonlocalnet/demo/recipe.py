"""The demos' recipes: YAML config files of the same schema as a user's training config
(``optim``, ``train``, ``data``, ``eval``, ``checkpoint``... only what differs from the library's
defaults) plus one ``demo`` section for what only the demo has (the generated data's sizes, the
networks' widths, the seeds). The built-in ones are packaged in ``nonlocalnet/demo/recipes/``
(:data:`RECIPES_DIR`: ``video.yaml``, ``video_quick.yaml``, ``video_v3.yaml``,
``video_v3_quick.yaml``, ``detection.yaml``, ``detection_quick.yaml``), chosen on a separate tuning
split (data seed 100 for the video demo), never on the held-out data the demos report.

A recipe is read by the engine's machinery (``base:`` inheritance, ``section.key=value``
overrides, unknown keys and wrong types are errors naming the key) into :class:`VideoDemoConfig`
or :class:`DetectionDemoConfig`; one run's training config is the recipe without ``demo`` plus
the run's own settings (:func:`run_config`)."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from nonlocalnet.demo.detection_data import ContextShapesConfig
from nonlocalnet.demo.synthetic import LongRangeTaskConfig
from nonlocalnet.engine.config import (
    Config,
    ConfigError,
    build_config,
    coerce,
    config_to_dict,
    read_config_data,
)
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models.resnet3d import TEMPORAL_PADDINGS
from nonlocalnet.tasks import DetectionTaskConfig, VideoConfig, config_from_dict

__all__ = [
    "RECIPES_DIR",
    "TASK_VERSIONS",
    "DetectionDemoConfig",
    "DetectionDemoSection",
    "VideoDemoConfig",
    "VideoDemoSection",
    "detection_recipe",
    "recipe_path",
    "recipe_settings",
    "run_config",
    "video_recipe",
    "video_recipe_name",
]

RECIPES_DIR = Path(__file__).parent / "recipes"
"""The built-in recipes (package data)."""

TASK_VERSIONS = ("v4", "v3")
"""The video demo's task versions: ``v4`` (default, ``video.yaml``) 6-frame clips with the cues
on the first and the last frame, more than the demo I3D's temporal receptive field (5 frames)
apart; ``v3`` (``video_v3.yaml``) the earlier 4-frame clips of 16-frame videos, which the I3D
solves without a non-local block."""

_Frozen = TypeVar("_Frozen", LongRangeTaskConfig, ContextShapesConfig)


def _generator(cls: type[_Frozen], values: dict, where: str) -> _Frozen:
    """The frozen dataclass ``cls`` (a generator's settings) from ``values`` over its defaults;
    YAML lists become tuples; errors name ``where.key``."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{where}.{key}'; valid keys here: {names}")
        if typing.get_origin(hints[key]) is tuple:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
            value = tuple(value)
        else:
            value = coerce(f"{where}.{key}", value, hints[key])
        given[key] = value
    try:
        return cls(**given)
    except (InvalidValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_ints(where: str, values: list, lo: int, hi: int | None = None) -> None:
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi) for v in values
    ):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{where}: expected a non-empty list of ints {bound}, got {values!r}")


@dataclass
class DemoSection:
    """What every demo's ``demo`` section has: ``seeds`` training runs per model (seeds 0, 1, ...)."""

    seeds: int = 3


@dataclass
class VideoDemoSection(DemoSection):
    """The video demo's own settings (``demo:`` of ``video*.yaml``).

    ``generator``: :class:`~nonlocalnet.demo.synthetic.LongRangeTaskConfig` fields over its
    defaults (the v4 task, 2000 training and 500 held-out videos). The networks
    (:func:`~nonlocalnet.demo.models.model_section`): a bottleneck ResNet of inner widths
    ``widths``, a ``stem_width`` stem, temporal max pooling of ``pool1_temporal`` and
    ``pool2_temporal`` frames; the I3D inflates conv1 to ``i3d_conv1`` frames and the first 1x1 of
    the stages ``i3d_inflated`` (0 = res2) to 3x1x1, and pads its temporal kernels with
    ``i3d_temporal_padding`` (``replicate``: zeros on the cue frames kept I3D + NL at chance on
    two of three tuning seeds). ``sub_sample`` (the block's max-pooled keys) and the training
    flips (``data.flip``) were tried on the tuning split and left off. ``scale`` multiplies the
    softmax instantiations' logits by ``1/sqrt(width)``, as the released code does for its
    softmax path (without it, an embedded Gaussian run diverged after reaching 94%); dot product
    and concatenation have no softmax and are not scaled (scaling them cost a concatenation run
    9 points). ``warmup_epochs``: the learning rate ramps up linearly over this much of training
    (``optim.warmup_iters`` = round(warmup_epochs x videos / batch); without it, concatenation
    models often stayed at chance for most of the run)."""

    generator: dict = field(default_factory=dict)
    widths: list = field(default_factory=lambda: [16, 32, 64, 128])
    stem_width: int = 16
    pool1_temporal: int = 1
    pool2_temporal: int = 0
    i3d_conv1: int = 1
    i3d_inflated: list = field(default_factory=lambda: [0, 1])
    i3d_temporal_padding: str = "replicate"
    sub_sample: bool = False
    scale: bool = True
    warmup_epochs: float = 1.0

    def validate(self) -> None:
        self.long_range_task()
        _check_ints("demo.widths", self.widths, 1)
        if len(self.widths) != 4:
            raise ConfigError(f"demo.widths: expected 4 widths (res2 to res5), got {self.widths!r}")
        _check_ints("demo.i3d_inflated", self.i3d_inflated, 0, 3)

    def long_range_task(self) -> LongRangeTaskConfig:
        """The generated task (``generator`` over LongRangeTaskConfig's defaults)."""
        return _generator(LongRangeTaskConfig, self.generator, "demo.generator")


@dataclass
class DetectionDemoSection(DemoSection):
    """The detection demo's own settings (``demo:`` of ``detection*.yaml``): ``models`` (detector
    names, trained in this order), ``num_train``/``num_val``/``num_tuning`` generated images per
    split, drawn with ``data_seed``; ``generator``:
    :class:`~nonlocalnet.demo.detection_data.ContextShapesConfig` fields over its defaults."""

    models: list = field(
        default_factory=lambda: [
            "maskrcnn_tiny_fpn",
            "maskrcnn_tiny_fpn_nl",
            "keypointrcnn_tiny_fpn",
            "keypointrcnn_tiny_fpn_nl",
        ]
    )
    num_train: int = 800
    num_val: int = 300
    num_tuning: int = 150
    data_seed: int = 0
    generator: dict = field(default_factory=dict)

    def validate(self) -> None:
        self.context_shapes()
        if not self.models or not all(isinstance(m, str) for m in self.models):
            raise ConfigError(f"demo.models: expected a non-empty list of detector names, got {self.models}")

    def context_shapes(self) -> ContextShapesConfig:
        """The generated images' settings (``generator`` over ContextShapesConfig's defaults)."""
        return _generator(ContextShapesConfig, self.generator, "demo.generator")


_DEMO_POSITIVE = frozenset({"demo.seeds"})


@dataclass
class VideoDemoConfig(VideoConfig):
    """A video demo recipe: a video training config (:class:`~nonlocalnet.tasks.VideoConfig`)
    whose ``demo`` section holds the demo's own settings (:class:`VideoDemoSection`)."""

    demo: VideoDemoSection = field(default_factory=VideoDemoSection)

    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        **VideoConfig.CHOICES,
        "task": ("video_classification",),
        "demo.i3d_temporal_padding": TEMPORAL_PADDINGS,
    }
    POSITIVE: ClassVar[frozenset[str]] = (
        VideoConfig.POSITIVE
        | _DEMO_POSITIVE
        | {
            "demo.stem_width",
            "demo.pool1_temporal",
            "demo.i3d_conv1",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = VideoConfig.NON_NEGATIVE | {
        "demo.pool2_temporal",
        "demo.warmup_epochs",
    }


@dataclass
class DetectionDemoConfig(DetectionTaskConfig):
    """A detection demo recipe: a detection training config
    (:class:`~nonlocalnet.tasks.DetectionTaskConfig`) whose ``demo`` section holds the demo's own
    settings (:class:`DetectionDemoSection`)."""

    demo: DetectionDemoSection = field(default_factory=DetectionDemoSection)

    CHOICES: ClassVar[Mapping[str, tuple[Any, ...]]] = {**DetectionTaskConfig.CHOICES, "task": ("detection",)}
    POSITIVE: ClassVar[frozenset[str]] = (
        DetectionTaskConfig.POSITIVE
        | _DEMO_POSITIVE
        | {
            "demo.num_train",
            "demo.num_val",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = DetectionTaskConfig.NON_NEGATIVE | {"demo.num_tuning"}


def recipe_path(recipe: str | os.PathLike[str]) -> Path:
    """A built-in recipe's file by name (``"video_quick"``: ``RECIPES_DIR/video_quick.yaml``),
    else ``recipe`` as a path."""
    packaged = RECIPES_DIR / f"{recipe}.yaml"
    if isinstance(recipe, str) and "/" not in recipe and packaged.is_file():
        return packaged
    path = Path(recipe)
    if not path.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"demo recipe {str(recipe)!r}: neither a built-in recipe {names} nor a file")
    return path


def video_recipe_name(task: str = "v4", quick: bool = False) -> str:
    """The built-in video recipe of task version ``task`` (a :data:`TASK_VERSIONS` entry)."""
    if task not in TASK_VERSIONS:
        raise InvalidValueError(f"unknown demo task version {task!r}; expected one of {TASK_VERSIONS}")
    return "video" + ("_v3" if task == "v3" else "") + ("_quick" if quick else "")


_Recipe = TypeVar("_Recipe", bound=Config)


def _read(recipe: str | os.PathLike[str], overrides: list[str] | None, cls: type[_Recipe]) -> _Recipe:
    return typing.cast(_Recipe, build_config(read_config_data(recipe_path(recipe), overrides), cls))


def video_recipe(
    recipe: str | os.PathLike[str] = "video", overrides: list[str] | None = None
) -> VideoDemoConfig:
    """Read a video demo recipe: a built-in name (:func:`recipe_path`) or a YAML file, with
    ``section.key=value`` ``overrides``."""
    return _read(recipe, overrides, VideoDemoConfig)


def detection_recipe(
    recipe: str | os.PathLike[str] = "detection", overrides: list[str] | None = None
) -> DetectionDemoConfig:
    """Read a detection demo recipe: a built-in name (:func:`recipe_path`) or a YAML file, with
    ``section.key=value`` ``overrides``."""
    return _read(recipe, overrides, DetectionDemoConfig)


def run_config(recipe: VideoDemoConfig | DetectionDemoConfig, run: dict[str, dict[str, Any] | Any]) -> Config:
    """The training config of one demo run: ``recipe`` without its ``demo`` section, with the
    run's own settings ``run`` (``output_dir``, ``seed``, and per section the keys to set: the
    data files, the network...) put in; built as the task's config class."""
    data = config_to_dict(recipe)
    del data["demo"]
    for key, value in run.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return config_from_dict(data)


def recipe_settings(recipe: VideoDemoConfig | DetectionDemoConfig) -> dict[str, Any]:
    """What a results file records of ``recipe``: its training settings that differ from the
    task config's defaults (``section.key``: value) and its whole ``demo`` section."""
    mine = config_to_dict(recipe)
    demo = mine.pop("demo")
    defaults = config_to_dict(type(recipe)())
    changed = {
        f"{name}.{key}": value
        for name, section in mine.items()
        if isinstance(section, dict)
        for key, value in section.items()
        if defaults[name][key] != value
    }
    top = {k: v for k, v in mine.items() if not isinstance(v, dict) and defaults[k] != v}
    return {**top, **changed, "demo": demo}
