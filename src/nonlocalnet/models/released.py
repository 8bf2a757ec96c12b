"""The authors' released Kinetics-400 models: the network each file belongs to, and the check that
a network is that one before their weights go into it.

Released weights load without an error into any network of the same shapes: the paper variant
(other pooling), the other frame geometry (8x8 or 32-frame), another non-local function; the
outputs are then wrong. So every loader checks first with :func:`check_model_matches`
(:func:`~nonlocalnet.models.load_caffe2_checkpoint` and :func:`~nonlocalnet.models.load_weights`
here; ``model.init``, ``nonlocalnet eval`` and ``nonlocalnet convert-caffe2`` through them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath

from torch import nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers import NonLocalOptions
from nonlocalnet.models.registry import list_models, model_info
from nonlocalnet.models.resnet3d import BACKBONE_NORMS, VideoResNet, VideoResNetSpec
from nonlocalnet.models.video_models import VARIANTS, model_spec
from nonlocalnet.ops import MODES

__all__ = [
    "RELEASED_CHECKPOINTS",
    "RELEASE_URL",
    "ReleasedCheckpoint",
    "ReleasedModelMismatchError",
    "check_bn_form",
    "check_model_matches",
    "released_checkpoint_info",
    "released_info_from_metadata",
]

RELEASE_URL = "https://dl.fbaipublicfiles.com/video-nonlocal/"
"""Where the authors' files are served (their README's links)."""


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A file of the authors' weights and the network it belongs to: the registry ``model`` built
    with ``variant`` and ``backbone_norm`` (``"affine"``: frozen BN, scale and shift only), trained and
    tested on clips of ``frames`` frames taken every ``sample_rate`` frames. For the authors' own
    files: their Kinetics-400 val top-1/top-5 (fully convolutional test, 10 clips x 3 crops),
    training iterations, GPUs and download URL."""

    file_name: str
    model: str
    backbone_norm: str = "batchnorm"
    frames: int = 32
    sample_rate: int = 2
    top1_top5: tuple[float, float] | None = None
    iterations: int | None = None
    gpus: int | None = None
    url: str | None = None
    variant: str = "released"

    @property
    def geometry(self) -> str:
        """``"{frames}x{sample_rate}"``, as the authors name their files (``32x2``, ``8x8``)."""
        return f"{self.frames}x{self.sample_rate}"

    def describe(self) -> str:
        """E.g. ``i3d_nl5_r50_8x8 (released variant, frozen BN, 32x4 clips)``."""
        bn = "frozen BN" if self.backbone_norm == "affine" else "BatchNorm"
        return f"{self.model} ({self.variant} variant, {bn}, {self.geometry} clips)"


def _zoo(
    file_name: str,
    model: str,
    top1_top5: tuple[float, float],
    *,
    backbone_norm: str = "batchnorm",
    iterations: int = 400_000,
    gpus: int = 8,
) -> ReleasedCheckpoint:
    frames, rate = (int(n) for n in file_name.split("_")[2].split("x"))
    return ReleasedCheckpoint(
        file_name, model, backbone_norm, frames, rate, top1_top5, iterations, gpus, RELEASE_URL + file_name
    )


# The model zoo of the authors' code (facebookresearch/video-nonlocal-net, README "Main Results"):
# ResNet-50, Kinetics-400. The 32x2 and 128x1 files are its "resnet_video_org" network (conv1 and
# pool1 stride 2 in time: our 32-frame models), the 8x8 and 32x4 files its "resnet_video" (no
# temporal stride before res2: our _8x8 models). The 128x1 and 32x4 files are frozen-BN ("affine",
# MODEL.USE_AFFINE) I3D models fine-tuned from the I3D 8x8 baseline.
RELEASED_CHECKPOINTS: dict[str, ReleasedCheckpoint] = {
    c.file_name: c
    for c in (
        _zoo("c2d_baseline_32x2_IN_pretrain_400k.pkl", "c2d_r50", (72.0, 90.0)),
        _zoo("c2d_nonlocal_32x2_IN_pretrain_400k.pkl", "c2d_nl5_r50", (73.9, 91.0)),
        _zoo("i3d_baseline_32x2_IN_pretrain_400k.pkl", "i3d_r50", (73.6, 90.8)),
        _zoo("i3d_nonlocal_32x2_IN_pretrain_400k.pkl", "i3d_nl5_r50", (74.9, 91.6)),
        _zoo("i3d_baseline_128x1_I3D_pretrain_400k.pkl", "i3d_r50", (75.2, 92.0), backbone_norm="affine"),
        _zoo("i3d_nonlocal_128x1_I3D_pretrain_400k.pkl", "i3d_nl5_r50", (76.5, 92.7), backbone_norm="affine"),
        _zoo("c2d_baseline_8x8_IN_pretrain_400k.pkl", "c2d_r50_8x8", (71.9, 90.0)),
        _zoo("c2d_nonlocal_8x8_IN_pretrain_400k.pkl", "c2d_nl5_r50_8x8", (74.4, 91.4)),
        _zoo("i3d_baseline_8x8_IN_pretrain_400k.pkl", "i3d_r50_8x8", (73.4, 90.9)),
        _zoo("i3d_nonlocal_8x8_IN_pretrain_400k.pkl", "i3d_nl5_r50_8x8", (74.7, 91.6)),
        _zoo("i3d_baseline_32x4_I3D_pretrain_400k.pkl", "i3d_r50_8x8", (75.5, 92.0), backbone_norm="affine"),
        _zoo(
            "i3d_nonlocal_32x4_I3D_pretrain_400k.pkl", "i3d_nl5_r50_8x8", (76.5, 92.6), backbone_norm="affine"
        ),
        _zoo("i3d_baseline_8x8_IN_pretrain_300k.pkl", "i3d_r50_8x8", (73.2, 90.8), iterations=300_000),
        _zoo(
            "i3d_baseline_8x8_IN_pretrain_600k_4gpu.pkl",
            "i3d_r50_8x8",
            (73.0, 90.4),
            iterations=600_000,
            gpus=4,
        ),
        _zoo(
            "i3d_baseline_8x8_IN_pretrain_300k_4gpu.pkl",
            "i3d_r50_8x8",
            (72.0, 90.1),
            iterations=300_000,
            gpus=4,
        ),
    )
}
"""Every Kinetics-400 ``.pkl`` the authors released, by file name."""


def released_checkpoint_info(file_name: str | os.PathLike) -> ReleasedCheckpoint | None:
    """The released file named ``file_name`` (a path, a file name, or one without ``.pkl``), or
    ``None`` for a name the authors did not release."""
    if not isinstance(file_name, str | os.PathLike):
        raise InvalidTypeError(f"file_name must be a str or a path, got {type(file_name).__name__}")
    name = PurePath(os.fspath(file_name)).name
    return RELEASED_CHECKPOINTS.get(name) or RELEASED_CHECKPOINTS.get(name + ".pkl")


def released_info_from_metadata(
    metadata: Mapping[str, str], *, source: str, tensor_names: Iterable[str] = ()
) -> ReleasedCheckpoint | None:
    """What our safetensors metadata says a file holds: ``None`` unless ``variant`` is
    ``released`` (``nonlocalnet convert-caffe2`` writes ``model``, ``variant``, ``backbone_norm`` and the
    ``.pkl`` it read as ``source_file``). A known ``source_file`` gives its table entry; else the
    metadata's model and backbone_norm (without ``backbone_norm``, the BN form of ``tensor_names``: statistics
    present or not). ``source``: the file, for messages."""
    if metadata.get("variant") != "released":
        return None
    known = released_checkpoint_info(metadata["source_file"]) if metadata.get("source_file") else None
    if known is not None:
        return known
    model = metadata.get("model")
    if model not in list_models("video"):
        raise InvalidValueError(
            f"{source}: its metadata says variant 'released' but names model {model!r}, not a registry "
            "model; convert the .pkl again with nonlocalnet convert-caffe2 --model NAME"
        )
    norm = metadata.get("backbone_norm")
    if norm is None:
        norm = "batchnorm" if any(k.endswith("running_var") for k in tensor_names) else "affine"
    elif norm not in BACKBONE_NORMS:
        raise InvalidValueError(
            f"{source}: its metadata names backbone_norm {norm!r}; expected one of {BACKBONE_NORMS}"
        )
    info = model_info(model, "video")
    clips = {"frames": info.frames or 32, "sample_rate": info.sample_rate or 2}  # video models have both
    for key in clips:
        if key in metadata:
            if not metadata[key].isdigit():
                raise InvalidValueError(f"{source}: its metadata {key} {metadata[key]!r} is not a count")
            clips[key] = int(metadata[key])
    return ReleasedCheckpoint(
        metadata.get("source_file") or source,
        model,
        norm,
        frames=clips["frames"],
        sample_rate=clips["sample_rate"],
    )


class ReleasedModelMismatchError(InvalidValueError):
    """A network is not the one the authors' weights belong to; the message names each setting
    that differs and its fix."""


_LIBRARY = {
    "name": "name",
    "variant": "variant",
    "backbone_norm": "backbone_norm",
    "mode": "nonlocal_options['mode']",
    "temporal_padding": "temporal_padding",
    "overrides": "build_model's overrides and nonlocal_options",
}


def _fix(key: str, value: str) -> str:
    if key.startswith("--"):
        return f"pass {key} {value}"
    if key == "name":
        return f"build it with build_model({value!r}, ...)"
    if key == "nonlocal_options['mode']":
        return f"build it with nonlocal_options={{'mode': {value!r}}}"
    if key in _LIBRARY.values():
        return f"build it with {key}={value!r}"
    return f"set {key}={value}"


def _effective(spec: VideoResNetSpec) -> VideoResNetSpec:
    """``spec`` without its non-local options when it has no non-local block (they do nothing)."""
    if any(s.nonlocal_after for s in spec.stages):
        return spec
    stages = tuple(dataclasses.replace(s, nonlocal_options={}) for s in spec.stages)
    return dataclasses.replace(spec, stages=stages, nonlocal_options=NonLocalOptions())


def _identify(spec: VideoResNetSpec) -> tuple[str, str, str] | None:
    """The registry ``(name, variant, mode)`` that builds ``spec`` (with its backbone norm)."""
    target = _effective(spec)
    for name in list_models("video"):
        for variant in VARIANTS:
            for mode in MODES:
                options = {"mode": mode}
                built = model_spec(
                    name, variant=variant, nonlocal_options=options, backbone_norm=spec.backbone_norm
                )
                if _effective(built) == target:
                    return name, variant, mode
    return None


def _baseline(model: str) -> str:
    """A registry name without its non-local part (``i3d_nl5_r50_8x8`` -> ``i3d_r50_8x8``)."""
    return "_".join(p for p in model.split("_") if not (p.startswith("nl") and p[2:].isdigit()))


def _geometry(model: str) -> str:
    if model.endswith("_8x8"):
        return "no temporal stride in conv1 and pool1"
    return "temporal stride 2 in conv1 and pool1"


def _norm_line(key: str, actual: str, expected: str, source: str) -> str:
    if expected == "affine":
        why = "is a frozen-BN model (affine scale and shift only, no BN statistics)"
    else:
        why = "holds BatchNorm statistics (it is not a frozen-BN model)"
    return f"{key}: {actual}, but {source} {why}: {_fix(key, expected)}"


def check_bn_form(
    model: nn.Module, backbone_norm: str, *, source: str, keys: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`ReleasedModelMismatchError` if ``model`` (a :class:`VideoResNet`) is not
    built with ``backbone_norm``, the BN form of the file ``source`` (``"affine"``: frozen BN)."""
    if not isinstance(model, VideoResNet):
        raise InvalidTypeError(f"check_bn_form needs a VideoResNet (build_model), got {type(model).__name__}")
    if model.backbone_norm != backbone_norm:
        key = {**_LIBRARY, **(keys or {})}["backbone_norm"]
        raise ReleasedModelMismatchError(_norm_line(key, model.backbone_norm, backbone_norm, source))


def check_model_matches(
    model: nn.Module,
    info: ReleasedCheckpoint,
    *,
    source: str | None = None,
    keys: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`ReleasedModelMismatchError` unless ``model`` is the network ``info``'s
    weights belong to: its registry model (and so its frame geometry), variant, BN form,
    embedded-Gaussian blocks, zero temporal padding and no overrides. The message has one line
    per setting that differs, each with its fix. A baseline file also fits its network with
    non-local blocks added, of any pairwise function (they start as the identity: the authors
    fine-tune their non-local models so; a strict load then lists the blocks' missing weights).

    ``model``: a :class:`VideoResNet` (``build_model``). ``source``: the file, for messages
    (default ``info.file_name``). ``keys``: how the caller spells each setting (``name``,
    ``variant``, ``backbone_norm``, ``mode``, ``temporal_padding``, ``overrides``): config keys
    like ``model.variant``, or command-line flags like ``--model`` (``pass --model NAME``); the
    rest are ``build_model``'s arguments."""
    if not isinstance(model, VideoResNet):
        raise InvalidTypeError(
            f"check_model_matches needs a VideoResNet (build_model), got {type(model).__name__}"
        )
    source = source or info.file_name
    k = {**_LIBRARY, **(keys or {})}
    lines = []
    norm = model.backbone_norm
    if norm != info.backbone_norm:
        lines.append(_norm_line(k["backbone_norm"], norm, info.backbone_norm, source))
    lines += _spec_lines(model.spec, info, k, source)
    padding = model.conv1.temporal_padding
    if padding != "zeros":
        lines.append(
            f"{k['temporal_padding']}: {padding}, but the authors' code pads time with zeros: "
            f"{_fix(k['temporal_padding'], 'zeros')}"
        )
    if lines:
        raise ReleasedModelMismatchError(
            f"{source} holds the weights of {info.describe()}; this network differs (same shapes, "
            "other outputs):\n  " + "\n  ".join(lines)
        )


def _spec_lines(
    spec: VideoResNetSpec, info: ReleasedCheckpoint, k: Mapping[str, str], source: str
) -> list[str]:
    """What of ``spec`` differs from the network of ``info`` (its backbone norm aside), one line
    each with the fix; a baseline file fits its network with non-local blocks added."""
    expected = model_spec(info.model, variant=info.variant, backbone_norm=spec.backbone_norm)
    if _effective(spec) == _effective(expected):
        return []
    found = _identify(spec)
    if found is None:
        fields = [
            f.name
            for f in dataclasses.fields(VideoResNetSpec)
            if getattr(spec, f.name) != getattr(expected, f.name)
        ]
        return [
            f"{k['overrides']}: the network differs from {info.model} ({info.variant} variant) in "
            f"{', '.join(fields)}: remove them and {_fix(k['name'], info.model)}"
        ]
    name, variant, mode = found
    added = name != info.model and _baseline(name) == info.model == _baseline(info.model)
    lines = []
    if name != info.model and not added:
        lines.append(
            f"{k['name']}: {name}, but {source} is {info.model} ({_geometry(info.model)}; "
            f"trained on {info.geometry} clips): {_fix(k['name'], info.model)}"
        )
    if variant != info.variant:
        lines.append(
            f"{k['variant']}: {variant}, but {source} is the authors' {info.variant} variant: "
            f"{_fix(k['variant'], info.variant)}"
        )
    if mode != "embedded_gaussian" and not added:
        lines.append(
            f"{k['mode']}: {mode}, but the blocks of {source} are embedded_gaussian: "
            f"{_fix(k['mode'], 'embedded_gaussian')}"
        )
    return lines
