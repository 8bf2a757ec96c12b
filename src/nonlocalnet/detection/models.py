"""torchvision's Mask R-CNN / Faster R-CNN / Keypoint R-CNN with the paper's non-local blocks,
registered in the model registry when this module is imported (``list_models("detector")``,
``model_info(name)``, ``build_model(name, ...)``), :func:`build_detector` and
:func:`load_detector_weights`.

The paper (section 6) puts one block "right before the last residual block of res4":
``backbone.body.layer3.4`` for ResNet-50, ``layer3.21`` for ResNet-101 (``layer3.0`` for the
ResNet-18 and tiny bodies), and, for keypoints, 4 blocks in the 8-conv head, after every 2
convs. The blocks are inserted with :func:`nonlocalnet.models.add_nonlocal`: every torchvision
state-dict key keeps its name, the blocks add ``...layer3.4.nl.*`` and
``roi_heads.keypoint_head.{3,7,11,15}.nl.*``, and each block is the identity at initialisation.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from nonlocalnet.detection.backbones import (
    BACKBONES,
    ReceptiveField,
    TinyResNet,
    build_body,
    fpn_backbone,
    freeze_layers,
    frozen_eps,
    load_imagenet_body,
)
from nonlocalnet.detection.heads import TINY_SIZE, keypoint_head_block_positions, tiny_head_options
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.layers import NonLocalBlock, NonLocalOptions
from nonlocalnet.models.insert import NONLOCAL_ATTR, add_nonlocal
from nonlocalnet.models.model_file import read_model_file
from nonlocalnet.models.registry import ModelInfo, model_info, register_model

__all__ = [
    "DETECTOR_BLOCK",
    "WeightsReport",
    "build_detector",
    "load_detector_weights",
    "nonlocal_blocks",
    "tiny_receptive_field",
]

_log = logging.getLogger(__name__)


DETECTOR_BLOCK = NonLocalOptions(sub_sample=True, use_scale=True, norm="none")
"""The detectors' block (2D, ``inter_channels = C / 2``): 2x2 max pool on phi and g; logits
divided by ``sqrt(inter_channels)`` as the released code does (unscaled, the softmax over
backbone features starts saturated); no output norm, ``W_z`` starting at 0: it depends on no
batch statistics (detectors train with 1-2 images per GPU) and keeps what the block adds to
every position alike (a GroupNorm over space removes it: docs/detection.md)."""


def _numbers(prefix: str, *values: float) -> dict[str, float]:
    return dict(zip((f"{prefix}_AP", f"{prefix}_AP50", f"{prefix}_AP75"), values, strict=True))


_PAPER: dict[str, dict[str, float]] = {  # the paper, Tables 5 and 6 (box, mask and keypoint AP)
    "maskrcnn_r50_fpn": _numbers("box", 38.0, 59.6, 41.0) | _numbers("mask", 34.6, 56.4, 36.5),
    "maskrcnn_r50_fpn_nl": _numbers("box", 39.0, 61.1, 41.9) | _numbers("mask", 35.5, 58.0, 37.4),
    "maskrcnn_r101_fpn": _numbers("box", 39.5, 61.4, 42.9) | _numbers("mask", 36.0, 58.1, 38.3),
    "maskrcnn_r101_fpn_nl": _numbers("box", 40.8, 63.1, 44.5) | _numbers("mask", 37.1, 59.9, 39.2),
    "keypointrcnn_r101_fpn": _numbers("kp", 65.1, 86.8, 70.4),
    "keypointrcnn_r101_fpn_nlhead": _numbers("kp", 66.0, 87.1, 71.7),
    "keypointrcnn_r101_fpn_nl_nlhead": _numbers("kp", 66.5, 87.3, 72.8),
}
_ARCHS = {"maskrcnn": "Mask R-CNN", "fasterrcnn": "Faster R-CNN", "keypointrcnn": "Keypoint R-CNN"}
_DEPTHS = {"r50": 50, "r101": 101, "r18": 18, "tiny": None}


def _register(arch: str, backbone: str, *, nl: bool = False, nlhead: bool = False) -> None:
    name = f"{arch}_{backbone}_fpn" + ("_nl" if nl else "") + ("_nlhead" if nlhead else "")
    spec = BACKBONES[backbone]
    head_blocks = (2 if backbone == "tiny" else 4) if nlhead else 0
    parts = [f"{_ARCHS[arch]}, {spec.description}"]
    if nl:
        parts.append(f"1 non-local block after layer3's block {spec.block_after.split('.')[-1]}")
    if head_blocks:
        parts.append(f"{head_blocks} in the keypoint head")
    paper = _PAPER.get(name, {})
    note = (
        f" (paper: {', '.join(f'{k} {v}' for k, v in paper.items() if k.endswith('_AP'))})" if paper else ""
    )
    info = ModelInfo(
        name=name,
        kind="detector",
        arch=arch,
        depth=_DEPTHS[backbone],
        nonlocal_blocks=int(nl) + head_blocks,
        description=" + ".join(parts) + note,
        paper=paper,
        has_masks=arch == "maskrcnn",
        has_keypoints=arch == "keypointrcnn",
        backbone=backbone,
        backbone_block_after=f"backbone.body.{spec.block_after}" if nl else None,
        head_blocks=head_blocks,
    )
    register_model(info, functools.partial(build_detector, name))


def nonlocal_blocks(model: nn.Module) -> dict[str, NonLocalBlock]:
    """The model's non-local blocks by qualified name (``backbone.body.layer3.4.nl``, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NonLocalBlock)}


def tiny_receptive_field(layer: str = "layer3") -> ReceptiveField:
    """The theoretical receptive field of the tiny body's ``layer`` output (``layer3``: 79 px,
    stride 8): what the tiny baseline's RoI heads can see around a position."""
    return TinyResNet().receptive_field(layer)


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_file(path: str | os.PathLike | None, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise MissingFileError(f"{what}: file not found: {os.fspath(path)}")


def _trainable_layers(is_trained: bool, value: int | None) -> int:
    """torchvision's ``_validate_trainable_layers``: 3 by default with weights, else all (5)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5):
        raise InvalidValueError(f"trainable_backbone_layers must be an int in 0..5, got {value!r}")
    if not is_trained:
        if value not in (None, 5):
            warnings.warn(
                f"trainable_backbone_layers={value} has no effect without weights or weights_backbone "
                "(as in torchvision): every backbone layer is trainable",
                stacklevel=3,
            )
        return 5
    return 3 if value is None else value


def build_detector(
    name: str,
    *,
    num_classes: int | None = None,
    num_keypoints: int | None = None,
    weights: str | os.PathLike | None = None,
    weights_backbone: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    nonlocal_options: NonLocalOptions | Mapping[str, Any] | None = None,
    min_size: int | tuple[int, ...] | None = None,
    max_size: int | None = None,
    pretrained: bool | None = None,
    **kwargs: Any,
) -> MaskRCNN | KeypointRCNN | FasterRCNN:
    """The detector ``name`` (``list_models("detector")``), with torchvision's keyword names and
    state-dict keys. Nothing is downloaded: weights are files.

    ``num_classes`` counts the background (default: the ``weights`` file's, else 91, or 2 for
    keypoint models, as torchvision); ``num_keypoints``: keypoint models only (the file's, else
    17). ``weights``: a whole detector's state dict file (torchvision's COCO ``.pth``, ours, or a
    training checkpoint), loaded with :func:`load_detector_weights` (``weights_backbone`` is then
    ignored, as in torchvision); ``weights_backbone``: an ImageNet ResNet state dict file.
    ``trainable_backbone_layers``: torchvision's (default 3 with any weights, else always 5);
    with weights, or ``pretrained`` (for weights loaded afterwards), the backbone's BN is
    ``FrozenBatchNorm2d``; the non-local blocks always train, even inside a frozen ``layer3``.
    ``nonlocal_options``: the blocks' options (channels and dimensionality follow the
    placement): a mapping of :class:`~nonlocalnet.layers.NonLocalOptions` fields overrides
    :data:`DETECTOR_BLOCK` (``{"norm": "groupnorm"}``: ``affine``, ``groupnorm`` and
    ``batchnorm`` start with scale 0), a ``NonLocalOptions`` is used as it is. ``min_size``:
    the short side, a tuple trains multi-scale (one drawn per image; evaluation uses the last;
    default 800, tiny models 128); ``max_size`` the long side's limit (1333; tiny 128).
    ``kwargs``: torchvision constructor keywords (``box_score_thresh``, ...), over
    :func:`~nonlocalnet.detection.heads.tiny_head_options` for tiny models.
    """
    info = model_info(name, "detector")
    block_options = NonLocalOptions.coerce(nonlocal_options, DETECTOR_BLOCK)
    _check_file(weights, "weights")
    _check_file(weights_backbone, "weights_backbone")
    if num_keypoints is not None and not info.has_keypoints:
        raise InvalidValueError(f"num_keypoints is for keypoint models; {name} has no keypoint head")
    state = None if weights is None else read_model_file(weights, kinds=_MODEL_FILES).state
    num_classes, num_keypoints = _head_sizes(info, state, num_classes, num_keypoints)
    trained = (
        (weights is not None or weights_backbone is not None) if pretrained is None else bool(pretrained)
    )
    body = _body(info, trained, None if weights is not None else weights_backbone, trainable_backbone_layers)
    sizes = {"min_size": min_size, "max_size": max_size}
    options = _constructor_options(info, num_classes, num_keypoints, sizes) | kwargs
    if options.get("box_predictor") is None:  # torchvision refuses both
        options["num_classes"] = num_classes
    if info.has_keypoints and options.get("keypoint_predictor") is None:
        options["num_keypoints"] = num_keypoints
    cls = KeypointRCNN if info.has_keypoints else MaskRCNN if info.has_masks else FasterRCNN
    model = cls(fpn_backbone(body, _backbone(info)), **options)
    _add_blocks(model, info, block_options)
    if weights is not None and state is not None:
        report = _load_state(model, state, os.fspath(weights), strict_nonlocal=True)
        report = _torchvision_eps(model, weights, report)
        _log.info("%s: %s", name, report.summary())
    return model


_MODEL_FILES = ("safetensors", "checkpoint", "state_dict")


def _backbone(info: ModelInfo) -> str:
    if info.backbone is None:
        raise InvalidValueError(f"detector {info.name!r} names no backbone in its ModelInfo")
    return info.backbone


def _head_sizes(
    info: ModelInfo, state: dict[str, torch.Tensor] | None, num_classes: int | None, num_keypoints: int | None
) -> tuple[int, int | None]:
    """``num_classes`` and ``num_keypoints``: as given, else the weights file's, else torchvision's."""
    kp_key = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
    if state is not None:
        if num_classes is None and "roi_heads.box_predictor.cls_score.weight" in state:
            num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        if info.has_keypoints and num_keypoints is None and kp_key in state:
            num_keypoints = int(state[kp_key].shape[1])
    default = 2 if info.has_keypoints else 91
    classes = _check_count(default if num_classes is None else num_classes, "num_classes", 2)
    if not info.has_keypoints:
        return classes, None
    return classes, _check_count(17 if num_keypoints is None else num_keypoints, "num_keypoints", 1)


def _body(
    info: ModelInfo, trained: bool, weights_backbone: str | os.PathLike | None, trainable: int | None
) -> nn.Module:
    """The ResNet body: frozen BN when ``trained``, ImageNet weights, frozen early layers."""
    body = build_body(_backbone(info), FrozenBatchNorm2d if trained else nn.BatchNorm2d)
    if weights_backbone is not None:
        load_imagenet_body(body, weights_backbone)
    freeze_layers(body, _trainable_layers(trained, trainable))
    return body


def _constructor_options(
    info: ModelInfo, num_classes: int, num_keypoints: int | None, sizes: dict[str, Any]
) -> dict[str, Any]:
    """torchvision's constructor keywords: the transform's sizes and the tiny models' heads."""
    tiny = info.backbone == "tiny"
    options: dict[str, Any] = {
        "min_size": TINY_SIZE if tiny else 800,
        "max_size": TINY_SIZE if tiny else 1333,
    }
    if tiny:
        options |= tiny_head_options(
            has_masks=info.has_masks,
            keypoints=info.has_keypoints,
            num_classes=num_classes,
            num_keypoints=num_keypoints,
        )
    return options | {k: v for k, v in sizes.items() if v is not None}


def _add_blocks(model: nn.Module, info: ModelInfo, options: NonLocalOptions) -> None:
    """The paper's blocks: after ``info.backbone_block_after`` and in the keypoint head; always
    trainable, even where ``trainable_backbone_layers`` froze ``layer3``."""
    blocks = []
    if info.backbone_block_after is not None:
        channels = BACKBONES[_backbone(info)].block_channels
        blocks += add_nonlocal(
            model, [info.backbone_block_after], in_channels=channels, dim=2, options=options
        )
    if info.head_blocks:
        head = model.get_submodule("roi_heads.keypoint_head")
        for index, channels in keypoint_head_block_positions(head):
            after = [f"roi_heads.keypoint_head.{index}"]
            blocks += add_nonlocal(model, after, in_channels=channels, dim=2, options=options)
    for block in blocks:
        block.requires_grad_(True)


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_detector_weights` did. ``missing``: the model's non-local keys the file
    lacks (left at their identity init); ``skipped_shape_mismatch``: predictor keys of another
    shape (another ``num_classes``/``num_keypoints``), re-initialised; ``skipped_nonlocal``: the
    file's non-local keys the model has no block for (``strict_nonlocal=False`` only)."""

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...] = ()
    skipped_shape_mismatch: tuple[str, ...] = ()
    skipped_nonlocal: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: counts, and the re-initialised predictors by module."""
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} non-local tensors new (identity)")
        if self.skipped_shape_mismatch:
            modules = sorted({k.rsplit(".", 1)[0] for k in self.skipped_shape_mismatch})
            parts.append(f"re-initialised (other shape): {', '.join(modules)}")
        if self.skipped_nonlocal:
            parts.append(f"ignored {len(self.skipped_nonlocal)} non-local tensors the model has no block for")
        return "; ".join(parts + list(self.notes))


def _is_nonlocal(key: str) -> bool:
    return f".{NONLOCAL_ATTR}." in f".{key}"


_PREDICTORS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.", "roi_heads.keypoint_predictor.")
# torchvision's COCO_V1 files, trained with FrozenBatchNorm eps 0 (its builders call overwrite_eps)
_TORCHVISION_EPS0 = (
    "maskrcnn_resnet50_fpn_coco-",
    "fasterrcnn_resnet50_fpn_coco-",
    "keypointrcnn_resnet50_fpn_coco-fc266e95",
)


def load_detector_weights(
    model: nn.Module, path: str | os.PathLike, *, strict_nonlocal: bool = True
) -> WeightsReport:
    """Load a detector state dict file into ``model`` (see :func:`build_detector`'s ``weights``).

    Every key of the file must be the model's and every key of the model the file's, except
    the model's non-local blocks (new, identity at init) and predictor tensors of another shape
    (re-initialised: fine-tuning COCO weights to other classes). With ``strict_nonlocal=False``
    the file's non-local keys the model lacks are skipped (an ``_nl`` checkpoint into its
    baseline); otherwise they are an error like any unexpected key. torchvision's COCO_V1 files
    (recognised by name) also set FrozenBatchNorm's eps to 0, as torchvision does.
    """
    _check_file(path, "weights")
    state = read_model_file(path, kinds=_MODEL_FILES).state
    report = _load_state(model, state, os.fspath(path), strict_nonlocal=strict_nonlocal)
    return _torchvision_eps(model, path, report)


def _torchvision_eps(model: nn.Module, path: str | os.PathLike, report: WeightsReport) -> WeightsReport:
    """torchvision's COCO_V1 files (by name) were trained with FrozenBatchNorm eps 0: set it."""
    if not Path(path).name.startswith(_TORCHVISION_EPS0):
        return report
    frozen_eps(model, 0.0)
    return WeightsReport(**{**report.__dict__, "notes": ("FrozenBatchNorm eps 0 (torchvision COCO_V1)",)})


def _load_state(
    model: nn.Module, state: dict[str, torch.Tensor], where: str, *, strict_nonlocal: bool
) -> WeightsReport:
    own = model.state_dict()
    frozen = {f"{n}." for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    state = {  # FrozenBatchNorm2d has no num_batches_tracked (it drops the key when loading)
        k: v
        for k, v in state.items()
        if not (k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] + "." in frozen)
    }
    unexpected = [k for k in state if k not in own]
    skipped_nl = [k for k in unexpected if _is_nonlocal(k)] if not strict_nonlocal else []
    unexpected = [k for k in unexpected if k not in skipped_nl]
    name = type(model).__name__
    if unexpected:
        hint = (
            "; the file has non-local blocks this model lacks: build the _nl model, or pass "
            "strict_nonlocal=False"
            if any(_is_nonlocal(k) for k in unexpected)
            else ""
        )
        raise InvalidValueError(
            f"{where} has {len(unexpected)} tensors this {name} has no place for, e.g. {unexpected[:6]}{hint}"
        )
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    wrong = [k for k in missing if not _is_nonlocal(k)]
    if wrong:
        raise InvalidValueError(f"{where} lacks {len(wrong)} tensors of this {name}, e.g. {wrong[:6]}")
    mismatch = [k for k in state if k in own and state[k].shape != own[k].shape]
    bad = [k for k in mismatch if not k.startswith(_PREDICTORS)]
    if bad:
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:4]]
        raise InvalidValueError(f"{where} does not fit this {name} ({len(bad)} shapes differ): {shapes}")
    keep = {k: v for k, v in state.items() if k not in mismatch and k not in skipped_nl}
    model.load_state_dict(keep, strict=False)
    return WeightsReport(where, tuple(keep), tuple(missing), tuple(mismatch), tuple(skipped_nl))


for _bb in ("r50", "r101", "r18", "tiny"):
    for _nl in (False, True):
        _register("maskrcnn", _bb, nl=_nl)
        if _bb == "r50":
            _register("fasterrcnn", _bb, nl=_nl)
for _bb in ("r50", "r101", "tiny"):
    for _nl, _head in ((False, False), (True, False), (False, True), (True, True)):
        _register("keypointrcnn", _bb, nl=_nl, nlhead=_head)
