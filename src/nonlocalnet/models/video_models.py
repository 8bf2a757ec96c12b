"""The paper's video models, registered by name: ``build_model("i3d_nl5_r50")``.

Names are ``{arch}[_nl{1,5,10}]_r{50,101}[_8x8]``:

* ``arch``: ``c2d`` (all kernels 1xkxk), ``i3d`` (I3D 3x1x1, the released code: the first 1x1 of
  every other block becomes 3x1x1, conv1 5x7x7), ``i3d3x3x3`` (the paper's other I3D: the 3x3 of
  the same blocks becomes 3x3x3, conv1 5x7x7);
* ``nl1``: one block before the last res4 block; ``nl5``: the released placement (R50 after res3
  blocks 1, 3 and res4 blocks 1, 3, 5; R101 res3 1, 3 and res4 6, 13, 20); ``nl10``: after every
  res3 and res4 block (R50 only: that is 10 blocks for ResNet-50);
* no suffix: the 32-frame models (conv1 temporal stride 2, 32x224x224 input); ``_8x8``: the
  8-frame models (conv1 temporal stride 1, pool1 1x3x3).

``variant="paper"`` (default) uses the paper's pooling (pool1 3x3x3, pool2 3x1x1) and block
(pool after the phi/g convs, no logit scale, MSRA init); ``variant="released"`` the authors'
code (pool1 2x3x3 without padding, pool2 2x1x1; pool before the convs, logit scale under the
softmax, std 0.01 init), which is what their checkpoints were trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers import NonLocalOptions
from nonlocalnet.models.registry import ModelInfo, register_model
from nonlocalnet.models.resnet3d import StageSpec, VideoResNet, VideoResNetSpec

__all__ = ["VARIANTS", "build_video_model", "model_spec"]

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_WIDTHS = (64, 128, 256, 512)
VARIANTS = ("paper", "released")
# per variant: pool1 and pool2 temporal kernels (32-frame models) and pool1's spatial padding
_POOLING = {"paper": (3, 3, 1), "released": (2, 2, 0)}


@dataclass(frozen=True)
class _Entry:
    """One registry name, parsed."""

    arch: str
    nonlocal_: str
    depth: int
    fast: bool


def _table() -> dict[str, _Entry]:
    """The naming grammar, written once: every valid name and what it stands for."""
    table = {}
    for arch in ("c2d", "i3d", "i3d3x3x3"):
        for nl in ("", "nl1", "nl5", "nl10"):
            for depth in _DEPTHS:
                if nl == "nl10" and depth != 50:
                    continue  # every res3 and res4 block is 10 blocks for ResNet-50 only
                for fast in (False, True):
                    name = f"{arch}{'_' + nl if nl else ''}_r{depth}{'_8x8' if fast else ''}"
                    table[name] = _Entry(arch, nl, depth, fast)
    return dict(sorted(table.items()))


_NAMES = _table()


def _inflated(stage: int, depth: int, block: int) -> bool:
    """The released code's every-other-block rule for the 3D kernel (stage 2..5)."""
    if stage == 2:
        return True
    if stage == 5:
        return block % 2 == 1
    return block % 2 == 0


def _nonlocal_after(nl: str, stage: int, depth: int, blocks: int) -> tuple[int, ...]:
    if nl == "nl1":
        return (blocks - 2,) if stage == 4 else ()
    if nl == "nl5" and stage in (3, 4):
        mod = 7 if (depth == 101 and stage == 4) else 2
        return tuple(i for i in range(blocks) if i % mod == mod - 1)
    if nl == "nl10" and stage in (3, 4):
        return tuple(range(blocks))
    return ()


_PAPER_RESULTS = {  # Kinetics-400 val, 32 frames: the paper, Tables 2-3
    ("c2d", "", 50): (71.8, 89.7),
    ("c2d", "", 101): (73.1, 91.0),
    ("c2d", "nl1", 50): (72.7, 90.5),
    ("c2d", "nl1", 101): (74.3, 91.3),
    ("c2d", "nl5", 50): (73.8, 91.0),
    ("c2d", "nl5", 101): (75.1, 91.7),
    ("c2d", "nl10", 50): (74.3, 91.2),
    ("i3d", "", 50): (73.3, 90.7),
    ("i3d", "", 101): (74.4, 91.1),
    ("i3d", "nl5", 50): (74.9, 91.6),
    ("i3d", "nl5", 101): (76.0, 92.1),
}


_PRESETS = {"paper": NonLocalOptions.paper, "released": NonLocalOptions.released}


def _parsed(name: str) -> _Entry:
    if not isinstance(name, str):
        raise InvalidTypeError(f"a model name must be a str, got {type(name).__name__}")
    if name not in _NAMES:
        from nonlocalnet.models.registry import model_info

        model_info(name)  # the registry's error, with the close names
        raise InvalidValueError(f"{name!r} is not one of the paper's video models")
    return _NAMES[name]


def _block_options(
    variant: str, backbone_norm: str, nonlocal_options: NonLocalOptions | Mapping[str, Any] | None
) -> NonLocalOptions:
    """The variant's block (:meth:`NonLocalOptions.paper`/``released``), without an output norm
    in the released affine models and with an affine one in the paper's; a mapping of
    ``nonlocal_options`` overrides that, a :class:`NonLocalOptions` replaces it."""
    affine = {"norm": "none" if variant == "released" else "affine"} if backbone_norm == "affine" else {}
    return NonLocalOptions.coerce(nonlocal_options, _PRESETS[variant](**affine))


def model_spec(
    name: str,
    *,
    variant: str = "paper",
    nonlocal_options: NonLocalOptions | Mapping[str, Any] | None = None,
    backbone_norm: str = "batchnorm",
) -> VideoResNetSpec:
    """The :class:`VideoResNetSpec` behind a registered video model's name.

    With ``backbone_norm="affine"`` (frozen BN, the authors' affine models) and
    ``variant="released"`` the non-local blocks have no output norm (``W_z`` starts at 0) and the
    res3 blocks attend within groups of 4 frames, as the released code trains those models (its
    affine config sets ``NONLOCAL.USE_BN: False``); with ``variant="paper"`` they use an affine
    output norm. ``nonlocal_options``: see :func:`build_video_model`."""
    e = _parsed(name)
    arch, nl, depth, fast = e.arch, e.nonlocal_, e.depth, e.fast
    if variant not in VARIANTS:
        raise InvalidValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    options = _block_options(variant, backbone_norm, nonlocal_options)
    grouped = backbone_norm == "affine" and variant == "released"
    stages = []
    for index, (blocks, width) in enumerate(zip(_DEPTHS[depth], _WIDTHS, strict=True)):
        stage = index + 2
        inflate = [3 if arch != "c2d" and _inflated(stage, depth, i) else 1 for i in range(blocks)]
        ones = [1] * blocks
        stages.append(
            StageSpec(
                depth=blocks,
                width=width,
                stride=1 if stage == 2 else 2,
                temporal_a=tuple(inflate if arch == "i3d" else ones),
                temporal_b=tuple(inflate if arch == "i3d3x3x3" else ones),
                nonlocal_after=_nonlocal_after(nl, stage, depth, blocks),
                nonlocal_options={"temporal_group": 4} if grouped and stage == 3 else {},
            )
        )
    pool1, pool2, pool1_padding = _POOLING[variant]
    return VideoResNetSpec(
        stages=tuple(stages),
        conv1_temporal=1 if arch == "c2d" else 5,
        conv1_temporal_stride=1 if fast else 2,
        pool1_temporal=1 if fast else pool1,
        pool1_temporal_stride=1 if fast else 2,
        pool1_padding=pool1_padding,
        pool2_temporal=pool2,
        nonlocal_options=options,
        backbone_norm=backbone_norm,
    )


def build_video_model(
    name: str,
    num_classes: int | None = None,
    *,
    variant: str | None = None,
    nonlocal_options: NonLocalOptions | Mapping[str, Any] | None = None,
    dropout: float = 0.5,
    temporal_padding: str = "zeros",
    backbone_norm: str | None = None,
    **spec_overrides: Any,
) -> VideoResNet:
    """Build a registered video model (``build_model(name, ...)`` calls this). ``num_classes``
    400, ``variant`` ``"paper"`` and ``backbone_norm`` ``"batchnorm"`` (``"affine"``: frozen BN)
    unless given; ``spec_overrides`` replace fields of its :class:`VideoResNetSpec`.
    ``nonlocal_options``: a mapping of :class:`NonLocalOptions` fields overrides the variant's
    block (``{"mode": "dot_product"}``), a :class:`NonLocalOptions` is used as it is. Named
    weights: ``build_model(name, weights=...)`` (:func:`~nonlocalnet.models.build_model`)."""
    spec = model_spec(
        name,
        variant="paper" if variant is None else variant,
        nonlocal_options=nonlocal_options,
        backbone_norm="batchnorm" if backbone_norm is None else backbone_norm,
    )
    fields = {f.name for f in dataclasses.fields(VideoResNetSpec)} - {"backbone_norm", "nonlocal_options"}
    bad = sorted(set(spec_overrides) - fields)
    if bad:
        own = set(inspect.signature(build_video_model).parameters) - {"name", "spec_overrides"}
        own |= {"weights", "progress"}  # build_model's own
        raise InvalidValueError(
            f"unknown override(s) {bad} for build_model; valid keys: {sorted(fields | own)}"
        )
    for key, value in spec_overrides.items():
        _check_override(key, value)
    if spec_overrides:
        spec = dataclasses.replace(spec, **spec_overrides)
    return VideoResNet(
        spec,
        num_classes=400 if num_classes is None else num_classes,
        dropout=dropout,
        temporal_padding=temporal_padding,
    )


def _info(name: str, e: _Entry) -> ModelInfo:
    blocks = sum(len(_nonlocal_after(e.nonlocal_, i + 2, e.depth, n)) for i, n in enumerate(_DEPTHS[e.depth]))
    top = None if e.fast else _PAPER_RESULTS.get((e.arch, e.nonlocal_, e.depth))
    return ModelInfo(
        name=name,
        kind="video",
        arch=e.arch,
        depth=e.depth,
        nonlocal_blocks=blocks,
        description=f"{e.arch.upper()} ResNet-{e.depth}, {blocks} non-local blocks, "
        f"{8 if e.fast else 32}-frame clips",
        paper={} if top is None else {"top1": top[0], "top5": top[1]},
        frames=8 if e.fast else 32,
        sample_rate=8 if e.fast else 2,
    )


for _name, _parsed_name in _NAMES.items():
    register_model(_info(_name, _parsed_name), functools.partial(build_video_model, _name))


def _check_override(key: str, value: Any) -> None:
    """A ``VideoResNetSpec`` field given to :func:`build_model` has its field's type."""
    kind = _FIELD_KINDS.get(key)
    if kind is None:
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidTypeError(f"override {key} must be an int, got {type(value).__name__} {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise InvalidTypeError(f"override {key} must be a bool, got {type(value).__name__} {value!r}")
    if kind == "stages" and not (
        isinstance(value, tuple | list) and all(isinstance(s, StageSpec) for s in value)
    ):
        raise InvalidTypeError(f"override stages must be a sequence of StageSpec, got {value!r}")


_FIELD_KINDS = {
    "conv1_temporal": int,
    "conv1_temporal_stride": int,
    "pool1_temporal": int,
    "pool1_temporal_stride": int,
    "pool1_padding": int,
    "pool2_temporal": int,
    "stem_width": int,
    "stride_on_1x1": bool,
    "stages": "stages",
}  # nonlocal_options and backbone_norm are build_model's own arguments
