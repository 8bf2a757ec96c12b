"""One registry of named models, video classifiers and detectors alike (timm's manner):
:func:`register_model`, :func:`list_models`, :func:`model_info` and the builders
(:func:`model_builder`); :func:`~nonlocalnet.models.build_model` (:mod:`nonlocalnet.models.factory`)
builds a registered model, with named weights or without.

The paper's video models (:mod:`nonlocalnet.models.video_models`) are registered when
:mod:`nonlocalnet.models` is imported; the detectors when :mod:`nonlocalnet.detection` is (it
needs the ``detection`` extra: torchvision, pycocotools).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError

__all__ = ["KINDS", "ModelInfo", "list_models", "model_builder", "model_info", "register_model"]

KINDS = ("video", "detector")
"""What a registered model is: a video classifier or a detector."""

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What a registered name stands for.

    ``kind``: ``"video"`` or ``"detector"``. ``arch``: ``c2d``, ``i3d``, ``i3d3x3x3`` (video) or
    ``maskrcnn``, ``fasterrcnn``, ``keypointrcnn`` (detectors). ``depth``: the ResNet's depth
    (``None`` for the tiny detector body). ``nonlocal_blocks``: how many blocks the model has.
    ``paper``: the paper's numbers for this model where it reports them (Wang et al., CVPR
    2018): ``top1``/``top5`` on Kinetics-400 val (Tables 2-3) for video models, ``box_AP``,
    ``mask_AP50``, ``kp_AP75``, ... on COCO val2017 (Tables 5-6) for detectors; else empty.

    Video models: ``frames`` and ``sample_rate`` of their clips. Detectors: ``has_masks``,
    ``has_keypoints``, ``backbone`` (a key of the detection backbones' table),
    ``backbone_block_after`` (the module the backbone's block follows; ``None``: no backbone
    block) and ``head_blocks`` (blocks in the keypoint head).
    """

    name: str
    kind: str
    arch: str
    depth: int | None
    nonlocal_blocks: int
    description: str = ""
    paper: Mapping[str, float] = field(default_factory=dict, hash=False)
    frames: int | None = None
    sample_rate: int | None = None
    has_masks: bool = False
    has_keypoints: bool = False
    backbone: str | None = None
    backbone_block_after: str | None = None
    head_blocks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidValueError(f"unknown model kind {self.kind!r}; expected one of {KINDS}")


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}


def register_model(info: ModelInfo, builder: Builder | None = None) -> Any:
    """Register ``builder`` (called as ``builder(**kwargs)`` by
    :func:`~nonlocalnet.models.build_model`) under
    ``info.name``; without ``builder``, a decorator that registers the function it decorates.
    A name registered twice is an error."""

    def register(fn: Builder) -> Builder:
        if info.name in _REGISTRY:
            raise InvalidValueError(f"model {info.name!r} is already registered")
        _REGISTRY[info.name] = _Entry(info, fn)
        return fn

    return register if builder is None else register(builder)


def list_models(kind: str | None = None) -> list[str]:
    """The registered names, sorted; ``kind`` (``"video"``, ``"detector"``) keeps that kind.
    Detectors are listed once :mod:`nonlocalnet.detection` is imported."""
    if kind is not None and kind not in KINDS:
        raise InvalidValueError(f"unknown model kind {kind!r}; expected one of {KINDS} or None")
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.info.kind == kind)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise InvalidTypeError(f"a model name must be a str, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "."
    detection = (
        ""
        if list_models("detector")
        else " The detectors are registered by importing nonlocalnet.detection "
        "(pip install 'nonlocalnet[detection]')."
    )
    message = f"unknown model {name!r}{hint}{detection} Valid names: {', '.join(list_models())}"
    raise InvalidValueError(message)


def model_info(name: str, kind: str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; an unknown name is an error naming close ones, and so
    is a model of another ``kind`` than the one given (``"video"``, ``"detector"``)."""
    info = _entry(name).info
    if kind is not None and info.kind != kind:
        names = ", ".join(list_models(kind))
        raise InvalidValueError(
            f"{name!r} is a {info.kind} model, not a {kind} model; {kind} models: {names}"
        )
    return info


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name`` (:func:`~nonlocalnet.models.build_model` calls it);
    an unknown name is an error naming close ones."""
    return _entry(name).builder
