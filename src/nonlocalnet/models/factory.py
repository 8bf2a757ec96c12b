"""The public way to build a registered model: :func:`build_model`, with named weights or without.

The top of :mod:`nonlocalnet.models`: it asks the registry (:mod:`nonlocalnet.models.registry`)
for the model's builder and, for a video model with ``weights``, checks the catalogue
(:mod:`nonlocalnet.models.zoo`) before anything is downloaded and loads the file
(:mod:`nonlocalnet.models.pretrained`) into the network it builds.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from nonlocalnet.errors import InvalidTypeError
from nonlocalnet.models.pretrained import load_named_weights
from nonlocalnet.models.registry import model_builder, model_info
from nonlocalnet.models.resnet3d import VideoResNet
from nonlocalnet.models.video_models import build_video_model
from nonlocalnet.models.zoo import WeightsEntry, check_kinetics_build, video_weights

__all__ = ["build_model", "build_with_weights"]


def build_model(
    name: str,
    *,
    weights: str | os.PathLike | WeightsEntry | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its builder (video models:
    :func:`~nonlocalnet.models.build_video_model`; detectors:
    :func:`~nonlocalnet.detection.build_detector`). Every builder takes the non-local blocks'
    options as ``nonlocal_options`` (a :class:`~nonlocalnet.layers.NonLocalOptions`, or a
    mapping of its fields over the model's own defaults).

    ``weights``: for a video model, a name from :func:`~nonlocalnet.models.list_weights`,
    downloaded once (``progress``: a bar) and loaded (:func:`build_with_weights`); for a detector,
    :func:`~nonlocalnet.detection.build_detector`'s ``weights`` file."""
    builder = model_builder(name)
    if weights is None:
        return builder(**kwargs)
    if model_info(name).kind == "detector":
        return builder(weights=weights, **kwargs)
    if not isinstance(weights, str | WeightsEntry):
        raise InvalidTypeError(
            f"the weights of a video model are a name from list_weights() (a str), got "
            f"{type(weights).__name__} {weights!r}; load a file with load_weights(model, path)"
        )
    return build_with_weights(name, weights, progress=progress, **kwargs)


def build_with_weights(
    name: str,
    weights: str | WeightsEntry,
    *,
    num_classes: int | None = None,
    variant: str | None = None,
    backbone_norm: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> VideoResNet:
    """``build_model(name, num_classes=..., variant=..., backbone_norm=..., weights=weights, ...)``
    for a video model: the authors' Kinetics weights choose ``num_classes``, ``variant`` and
    ``backbone_norm`` (each given otherwise is an error naming it and the fix, before anything is
    downloaded); ImageNet weights are inflated into the model built as asked. ``kwargs``:
    :func:`~nonlocalnet.models.build_video_model`'s."""
    entry = video_weights(weights)
    if entry.kind == "kinetics":
        check_kinetics_build(
            entry, name, num_classes=num_classes, variant=variant, backbone_norm=backbone_norm
        )
        num_classes, variant, backbone_norm = entry.num_classes, entry.variant, entry.backbone_norm
    model = build_video_model(name, num_classes, variant=variant, backbone_norm=backbone_norm, **kwargs)
    load_named_weights(model, entry, progress=progress)
    return model
