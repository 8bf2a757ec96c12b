"""torchvision's Mask R-CNN / Faster R-CNN / Keypoint R-CNN with the paper's non-local blocks:
the registry (:func:`list_detectors`, :func:`detector_info`), :func:`build_detector` and
:func:`load_detector_weights`.

The paper (section 6) puts one block "right before the last residual block of res4":
``backbone.body.layer3.4`` for ResNet-50, ``layer3.21`` for ResNet-101 (``layer3.0`` for the
ResNet-18 and tiny bodies), and, for keypoints, 4 blocks in the 8-conv head, after every 2
convs. The blocks are inserted with :func:`nonlocalnet.models.add_nonlocal`: every torchvision
state-dict key keeps its name, the blocks add ``...layer3.4.nl.*`` and
``roi_heads.keypoint_head.{3,7,11,15}.nl.*``, and each block is the identity at initialisation.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from dataclasses import dataclass, field
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
from nonlocalnet.engine.model_file import read_model_file
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.models.insert import NONLOCAL_ATTR, add_nonlocal

__all__ = [
    "DetectorInfo",
    "WeightsReport",
    "build_detector",
    "detector_info",
    "list_detectors",
    "load_detector_weights",
    "nonlocal_blocks",
    "tiny_receptive_field",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorInfo:
    """What a registered detector is. ``kind``: ``"instances"`` (boxes, and masks when
    ``has_masks``) or ``"keypoints"``; ``backbone``: a key of
    :data:`~nonlocalnet.detection.backbones.BACKBONES`; ``backbone_block_after``: the module the
    backbone block follows (``None``: no backbone block); ``head_blocks``: blocks in the keypoint
    head; ``paper``: the paper's COCO val2017 numbers for this model (``box_AP``, ``mask_AP50``,
    ``kp_AP75``, ... in percent) where the paper has the row, else empty."""

    name: str
    kind: str
    has_masks: bool
    backbone: str
    backbone_block_after: str | None
    head_blocks: int
    paper: dict[str, float] = field(default_factory=dict, hash=False)
    description: str = ""


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
_DETECTORS: dict[str, DetectorInfo] = {}


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
    _DETECTORS[name] = DetectorInfo(
        name=name,
        kind="keypoints" if arch == "keypointrcnn" else "instances",
        has_masks=arch == "maskrcnn",
        backbone=backbone,
        backbone_block_after=f"backbone.body.{spec.block_after}" if nl else None,
        head_blocks=head_blocks,
        paper=paper,
        description=" + ".join(parts) + note,
    )


for _bb in ("r50", "r101", "r18", "tiny"):
    for _nl in (False, True):
        _register("maskrcnn", _bb, nl=_nl)
        if _bb == "r50":
            _register("fasterrcnn", _bb, nl=_nl)
for _bb in ("r50", "r101", "tiny"):
    for _nl, _head in ((False, False), (True, False), (False, True), (True, True)):
        _register("keypointrcnn", _bb, nl=_nl, nlhead=_head)


def list_detectors() -> list[str]:
    """The registered detector names."""
    return list(_DETECTORS)


def detector_info(name: str) -> DetectorInfo:
    """The :class:`DetectorInfo` of ``name``; an unknown name is an error listing close ones."""
    if name not in _DETECTORS:
        close = difflib.get_close_matches(str(name), list(_DETECTORS), n=5, cutoff=0.5)
        raise InvalidValueError(
            f"unknown detector {name!r}; close names: {close or 'none'}; all: {list(_DETECTORS)}"
        )
    return _DETECTORS[name]


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
    nonlocal_mode: str = "embedded_gaussian",
    nonlocal_norm: str = "none",
    nonlocal_options: dict[str, Any] | None = None,
    min_size: int | tuple[int, ...] | None = None,
    max_size: int | None = None,
    pretrained: bool | None = None,
    **kwargs: Any,
) -> MaskRCNN | KeypointRCNN | FasterRCNN:
    """The detector ``name`` (:func:`list_detectors`), with torchvision's keyword names and
    state-dict keys. Nothing is downloaded: weights are files.

    Args:
        num_classes: classes including the background (default: the ``weights`` file's, else
            91, or 2 for keypoint models, as torchvision).
        num_keypoints: keypoint models only (default: the file's, else 17).
        weights: a whole detector's state dict file (torchvision's COCO ``.pth``, ours ``.pt`` /
            ``.pth`` / ``.safetensors``, or a training checkpoint), loaded with
            :func:`load_detector_weights`: only the new blocks may be missing; predictors whose
            shape differs (another ``num_classes``) are re-initialised. ``weights_backbone`` is
            then ignored, as in torchvision.
        weights_backbone: an ImageNet ResNet state dict file (torchvision's ``resnet50`` names).
        trainable_backbone_layers: torchvision's: the last 0..5 of ``layer4 ... conv1`` stay
            trainable (default 3 with any weights; without weights always 5). With weights the
            backbone's BN is ``FrozenBatchNorm2d``. The non-local blocks are always trainable,
            even inside a frozen ``layer3``.
        nonlocal_mode: the blocks' pairwise function (``"embedded_gaussian"``, ...).
        nonlocal_norm: the norm after ``W_z``. Default ``"none"`` (``W_z`` starts at 0): it
            depends on no batch statistics (detectors train with 1-2 images per GPU) and keeps
            what the block adds to every position alike (a GroupNorm over space removes it:
            docs/detection.md). ``"affine"`` (frozen-BN scale, starts at 0), ``"groupnorm"``
            and ``"batchnorm"`` (their scale starts at 0) are the other choices. Each keeps the
            block the identity at initialisation.
        nonlocal_options: more :class:`~nonlocalnet.layers.NonLocalBlock` keywords (the blocks are
            2D, ``inter_channels = C / 2``; defaults ``sub_sample=True``, 2x2 max pool on phi and
            g, and ``use_scale=True``, logits divided by ``sqrt(inter_channels)`` as the released
            code does: unscaled, the softmax over backbone features starts saturated).
        min_size: the transform's short side; a tuple trains multi-scale (one size drawn per
            image by torchvision's ``GeneralizedRCNNTransform``; evaluation uses the last).
            Default 800 (tiny models: 128). torchvision's own keypoint builder trains at
            ``(640, 672, 704, 736, 768, 800)``: pass that to match.
        max_size: the long side's limit (default 1333; tiny models 128).
        pretrained: build as for fine-tuning from weights (FrozenBatchNorm2d, torchvision's
            default of 3 trainable layers) although no file is given here, for weights loaded
            afterwards; default: whether ``weights`` or ``weights_backbone`` is given.
        **kwargs: torchvision constructor keywords (``rpn_batch_size_per_image``,
            ``box_score_thresh``, ``box_detections_per_img``, ...); for tiny models they
            override the small defaults of :func:`~nonlocalnet.detection.heads.tiny_head_options`.
    """
    info = detector_info(name)
    _check_file(weights, "weights")
    _check_file(weights_backbone, "weights_backbone")
    keypoints = info.kind == "keypoints"
    if num_keypoints is not None and not keypoints:
        raise InvalidValueError(f"num_keypoints is for keypoint models; {name} has no keypoint head")
    state = None
    if weights is not None:
        state = read_model_file(weights, kinds=("safetensors", "checkpoint", "state_dict")).state
        if num_classes is None and "roi_heads.box_predictor.cls_score.weight" in state:
            num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        kp_key = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
        if keypoints and num_keypoints is None and kp_key in state:
            num_keypoints = int(state[kp_key].shape[1])
    num_classes = _check_count(
        (2 if keypoints else 91) if num_classes is None else num_classes, "num_classes", 2
    )
    if keypoints:
        num_keypoints = _check_count(17 if num_keypoints is None else num_keypoints, "num_keypoints", 1)
    block_options = dict(nonlocal_options or {})
    clash = sorted(set(block_options) & {"mode", "norm", "in_channels", "dim"})
    if clash:
        raise InvalidValueError(
            f"nonlocal_options may not set {clash}: use nonlocal_mode= and nonlocal_norm= (channels and "
            "dimensionality follow the placement)"
        )
    block_options = {
        "sub_sample": True,
        "use_scale": True,
        **block_options,
        "mode": nonlocal_mode,
        "norm": nonlocal_norm,
    }

    is_trained = (
        (weights is not None or weights_backbone is not None) if pretrained is None else bool(pretrained)
    )
    trainable = _trainable_layers(is_trained, trainable_backbone_layers)
    body = build_body(info.backbone, FrozenBatchNorm2d if is_trained else nn.BatchNorm2d)
    if weights_backbone is not None and weights is None:
        load_imagenet_body(body, weights_backbone)
    freeze_layers(body, trainable)

    tiny = info.backbone == "tiny"
    options: dict[str, Any] = {
        "min_size": TINY_SIZE if tiny else 800,
        "max_size": TINY_SIZE if tiny else 1333,
    }
    if tiny:
        options |= tiny_head_options(
            has_masks=info.has_masks,
            keypoints=keypoints,
            num_classes=num_classes,
            num_keypoints=num_keypoints,
        )
    options |= {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
    options |= kwargs
    if options.get("box_predictor") is None:
        options["num_classes"] = num_classes
    if keypoints and options.get("keypoint_predictor") is None:
        options["num_keypoints"] = num_keypoints
    cls = KeypointRCNN if keypoints else MaskRCNN if info.has_masks else FasterRCNN
    model = cls(fpn_backbone(body, info.backbone), **options)

    blocks = []
    if info.backbone_block_after is not None:
        channels = BACKBONES[info.backbone].block_channels
        blocks += add_nonlocal(
            model, [info.backbone_block_after], in_channels=channels, dim=2, **block_options
        )
    if info.head_blocks:
        for index, channels in keypoint_head_block_positions(model.roi_heads.keypoint_head):
            after = [f"roi_heads.keypoint_head.{index}"]
            blocks += add_nonlocal(model, after, in_channels=channels, dim=2, **block_options)
    for block in blocks:
        block.requires_grad_(True)  # new: trainable even where trainable_backbone_layers froze layer3
    if state is not None:
        report = _load_state(model, state, os.fspath(weights), strict_nonlocal=True)
        report = _torchvision_eps(model, weights, report)
        _log.info("%s: %s", name, report.summary())
    return model


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
    state = read_model_file(path, kinds=("safetensors", "checkpoint", "state_dict")).state
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
