"""One ResNet video backbone for C2D, I3D 3x1x1 and I3D 3x3x3, described by data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers import NonLocalBlock, NonLocalOptions
from nonlocalnet.layers.norm import check_norm, create_norm
from nonlocalnet.models.insert import NONLOCAL_ATTR

__all__ = [
    "BACKBONE_NORMS",
    "TEMPORAL_PADDINGS",
    "Bottleneck3d",
    "StageSpec",
    "VideoResNet",
    "VideoResNetSpec",
]

TEMPORAL_PADDINGS = ("zeros", "replicate")
BACKBONE_NORMS = ("batchnorm", "affine")
"""The norms of the backbone's conv layers (:data:`nonlocalnet.layers.norm.NORMS` but ``"none"``)."""


@dataclass(frozen=True)
class StageSpec:
    """One residual stage: ``depth`` bottleneck blocks of inner width ``width`` (output
    ``4 * width``), spatial stride ``stride`` on block 0's 3x3, per-block temporal kernels of the
    first 1x1 (``temporal_a``, branch2a) and of the 3x3 (``temporal_b``, branch2b), the
    indices of the blocks followed by a non-local block, and :class:`NonLocalOptions` fields for
    this stage's non-local blocks (over the network-wide ``VideoResNetSpec.nonlocal_options``)."""

    depth: int
    width: int
    stride: int
    temporal_a: tuple[int, ...]
    temporal_b: tuple[int, ...]
    nonlocal_after: tuple[int, ...] = ()
    nonlocal_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("temporal_a", "temporal_b"):
            kernels = getattr(self, name)
            if len(kernels) != self.depth or any(k < 1 or k % 2 == 0 for k in kernels):
                raise InvalidValueError(f"{name} must hold {self.depth} odd kernels, got {kernels}")
        bad = [i for i in self.nonlocal_after if not 0 <= i < self.depth]
        if bad:
            raise InvalidValueError(f"nonlocal_after {bad} outside the stage's {self.depth} blocks")
        NonLocalOptions().replace(**self.nonlocal_options)  # unknown or bad fields: an error now


@dataclass(frozen=True)
class VideoResNetSpec:
    """The whole network: stem, the four stages (res2..res5) and the temporal pooling.

    ``conv1_temporal`` and ``conv1_temporal_stride``: conv1 is ``t x 7 x 7`` with stride
    ``(s, 2, 2)``. ``pool1_temporal``/``pool1_temporal_stride``: pool1 is ``t x 3 x 3``.
    ``pool1_padding``: pool1's spatial padding, 1 (paper, torchvision: res2 is 56x56 at 224) or 0
    (the released Caffe2 code, ``pads=0``: 55x55).
    ``pool2_temporal``: pool2 after res2 is ``t x 1 x 1`` with temporal stride 2 (0: none).
    ``stride_on_1x1``: put block 0's spatial stride on the first 1x1 (the original MSRA ResNet)
    instead of the 3x3 (the released code, torchvision); same weights, fewer FLOPs.
    ``nonlocal_options``: the options of every :class:`NonLocalBlock` (a mapping of
    :class:`NonLocalOptions` fields is read as overrides of its defaults).
    ``stem_width``: conv1's output channels (64 in the paper; smaller for toy models).
    ``backbone_norm``: the norm of the conv layers, ``"batchnorm"`` or ``"affine"`` (frozen BN:
    the authors' affine models).
    """

    stages: tuple[StageSpec, ...]
    conv1_temporal: int = 1
    conv1_temporal_stride: int = 2
    pool1_temporal: int = 3
    pool1_temporal_stride: int = 2
    pool1_padding: int = 1
    pool2_temporal: int = 3
    stride_on_1x1: bool = False
    nonlocal_options: NonLocalOptions = field(default_factory=NonLocalOptions)
    stem_width: int = 64
    backbone_norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.pool1_padding not in (0, 1):
            raise InvalidValueError(f"pool1_padding must be 0 or 1, got {self.pool1_padding!r}")
        check_norm(self.backbone_norm, BACKBONE_NORMS, name="backbone_norm")
        object.__setattr__(self, "nonlocal_options", NonLocalOptions.coerce(self.nonlocal_options))

    @property
    def num_nonlocal(self) -> int:
        return sum(len(s.nonlocal_after) for s in self.stages)

    @property
    def temporal_receptive_field(self) -> int:
        """Input frames one res5 position sees through the convolutions and pooling (the
        non-local blocks, which see the whole clip, left out): 1 for a C2D without temporal
        pooling, ``conv1 + 2 x (inflated 3-frame kernels)`` for an I3D without temporal strides."""
        field_, jump = 1, 1

        def layer(kernel: int, stride: int) -> None:
            nonlocal field_, jump
            field_ += (kernel - 1) * jump
            jump *= stride

        layer(self.conv1_temporal, self.conv1_temporal_stride)
        layer(self.pool1_temporal, self.pool1_temporal_stride)
        for index, stage in enumerate(self.stages):
            for ka, kb in zip(stage.temporal_a, stage.temporal_b, strict=True):
                layer(ka, 1)
                layer(kb, 1)
            if index == 0 and self.pool2_temporal:
                layer(self.pool2_temporal, 2)
        return field_


class _Conv3d(nn.Conv3d):
    """A Conv3d whose temporal padding may replicate the border frames instead of zeros.

    With ``"replicate"``, a network inflated from 2D weights sees a static video exactly as the
    2D network sees one frame, at every frame (zeros make the border frames differ).
    """

    def __init__(self, *args: Any, temporal_padding: str = "zeros", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temporal_padding = temporal_padding
        self._pad_t = int(self.padding[0]) if temporal_padding == "replicate" else 0
        if self._pad_t:
            self.padding = (0, *self.padding[1:])

    def forward(self, x: Tensor) -> Tensor:
        if self._pad_t:
            x = F.pad(x, (0, 0, 0, 0, self._pad_t, self._pad_t), mode="replicate")
        return super().forward(x)


class Bottleneck3d(nn.Module):
    """ResNet bottleneck ``1x1 -> 3x3 -> 1x1`` in 3D, stride on the 3x3, optional non-local block
    ``nl`` applied to the block's output. Names follow torchvision (``conv1``, ``bn1``, ...,
    ``downsample.0/1``)."""

    expansion = 4
    applies_nonlocal = True  # forward runs ``self.nl``: add_nonlocal need not wrap it

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        stride: int = 1,
        temporal_a: int = 1,
        temporal_b: int = 1,
        temporal_padding: str = "zeros",
        stride_on_1x1: bool = False,
        backbone_norm: str = "batchnorm",
        nonlocal_block: NonLocalBlock | None = None,
    ) -> None:
        super().__init__()
        out = width * self.expansion
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        check_norm(backbone_norm, BACKBONE_NORMS, name="backbone_norm")

        def norm_layer(channels: int) -> nn.Module:
            return create_norm(backbone_norm, channels, dim=3)

        self.conv1 = _Conv3d(
            in_channels, width, (temporal_a, 1, 1), stride=(1, s1, s1), padding=(temporal_a // 2, 0, 0),
            bias=False, temporal_padding=temporal_padding,
        )  # fmt: skip
        self.bn1 = norm_layer(width)
        self.conv2 = _Conv3d(
            width,
            width,
            (temporal_b, 3, 3),
            stride=(1, s3, s3),
            padding=(temporal_b // 2, 1, 1),
            bias=False,
            temporal_padding=temporal_padding,
        )
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv3d(width, out, 1, bias=False)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv3d(in_channels, out, 1, stride=(1, stride, stride), bias=False), norm_layer(out)
            )
            if stride != 1 or in_channels != out
            else None
        )
        self.register_module(NONLOCAL_ATTR, nonlocal_block)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.relu(self.bn3(self.conv3(y)) + identity)
        nl = getattr(self, NONLOCAL_ATTR)
        return y if nl is None else nl(y)


class VideoResNet(nn.Module):
    """ResNet video classifier ``(B, 3, T, H, W) -> (B, num_classes)`` built from a spec.

    ``forward`` pools globally, applies dropout and the classifier. ``forward_dense`` pools time
    and applies the classifier at every training-size window of the last feature map (fully
    convolutional testing on larger frames); ``fully_convolutional_scores`` averages the
    per-window softmax, as the authors' test protocol does. ``backbone_norm``: the spec's.
    """

    def __init__(
        self,
        spec: VideoResNetSpec,
        *,
        num_classes: int = 400,
        dropout: float = 0.5,
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise InvalidValueError(
                f"unknown temporal_padding {temporal_padding!r}; expected one of {TEMPORAL_PADDINGS}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.spec = spec
        self.backbone_norm = norm = spec.backbone_norm
        t1 = spec.conv1_temporal
        self.conv1 = _Conv3d(
            3,
            spec.stem_width,
            (t1, 7, 7),
            stride=(spec.conv1_temporal_stride, 2, 2),
            padding=(t1 // 2, 3, 3),
            bias=False,
            temporal_padding=temporal_padding,
        )
        self.bn1 = create_norm(norm, spec.stem_width, dim=3)
        self.relu = nn.ReLU(inplace=True)
        tp1 = spec.pool1_temporal
        self.maxpool = nn.MaxPool3d(
            (tp1, 3, 3),
            stride=(spec.pool1_temporal_stride, 2, 2),
            padding=((tp1 - 1) // 2, spec.pool1_padding, spec.pool1_padding),
        )
        tp2 = spec.pool2_temporal
        self.pool2 = (
            nn.MaxPool3d((tp2, 1, 1), stride=(2, 1, 1), padding=((tp2 - 1) // 2, 0, 0))
            if tp2
            else nn.Identity()
        )
        channels = spec.stem_width
        for index, stage in enumerate(spec.stages, start=1):
            self.add_module(f"layer{index}", self._stage(stage, channels, temporal_padding))
            channels = stage.width * Bottleneck3d.expansion
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _stage(self, stage: StageSpec, channels: int, temporal_padding: str) -> nn.Sequential:
        """One residual stage of bottleneck blocks, each followed by its non-local block if any."""
        spec, blocks = self.spec, []
        for i in range(stage.depth):
            out = stage.width * Bottleneck3d.expansion
            nl = (
                NonLocalBlock(out, dim=3, options=spec.nonlocal_options, **stage.nonlocal_options)
                if i in stage.nonlocal_after
                else None
            )
            blocks.append(
                Bottleneck3d(
                    channels,
                    stage.width,
                    stride=stage.stride if i == 0 else 1,
                    temporal_a=stage.temporal_a[i],
                    temporal_b=stage.temporal_b[i],
                    temporal_padding=temporal_padding,
                    stride_on_1x1=spec.stride_on_1x1,
                    backbone_norm=spec.backbone_norm,
                    nonlocal_block=nl,
                )
            )
            channels = out
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # non-local blocks initialise themselves (identity at init): skip them and their parts
        in_blocks = {id(m) for b in self.modules() if isinstance(b, NonLocalBlock) for m in b.modules()}
        for m in self.modules():
            if id(m) in in_blocks:
                continue
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidValueError(f"expected a clip of shape (B, 3, T, H, W), got {shape}")
        if not x.is_floating_point():
            raise InvalidTypeError(f"expected a floating-point clip (normalised pixels), got dtype {x.dtype}")

    def features(self, x: Tensor) -> Tensor:
        """The res5 feature map ``(B, 2048, T', H', W')``."""
        self._check(x)
        stages = self._stages()
        x = self.pool2(stages[0](self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        for stage in stages[1:]:
            x = stage(x)
        return x

    def _stages(self) -> list[nn.Module]:
        """``layer1`` .. ``layer{n}``: the residual stages, in order."""
        return [self.get_submodule(f"layer{i}") for i in range(1, len(self.spec.stages) + 1)]

    def stage_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """The output of the stem and of every stage, by name (``pool1``, ``res2``..``res5``)."""
        self._check(x)
        out = {"pool1": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        stages = self._stages()
        out["res2"] = stages[0](out["pool1"])
        y = self.pool2(out["res2"])
        for i, stage in enumerate(stages[1:], start=3):
            y = out[f"res{i}"] = stage(y)
        return out

    def pooled_features(self, x: Tensor) -> Tensor:
        """Globally averaged res5 features ``(B, 2048)``, the paper's clip representation."""
        return self.avgpool(self.features(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pooled_features(x)))

    def res5_size(self, size: int) -> int:
        """Side of the res5 map for frames of side ``size``: conv1 and each stage's stride ``s``
        give ``ceil(size / s)``; pool1 (3x3, stride 2, padding ``p``) ``(size + 2p - 3) // 2 + 1``."""
        if size < 1:
            raise InvalidValueError(f"size must be a positive number of pixels, got {size}")
        size = -(-size // 2)  # conv1
        size = (size + 2 * self.spec.pool1_padding - 3) // 2 + 1
        if size < 1:
            raise InvalidValueError("the frames are too small for pool1")
        for stride in (stage.stride for stage in self.spec.stages):
            size = -(-size // stride)
        return size

    def forward_dense(self, x: Tensor, window: int | None = None) -> Tensor:
        """The classifier at every spatial window of the res5 map: ``(B, num_classes, H'', W'')``
        logits. Features are first averaged over all of time (the released code's pool5 spans
        the clip), then over ``window x window`` squares at stride 1 (the res5 side of a training
        crop, :meth:`res5_size`; 7 for 224 crops), so that each window sees what the classifier
        was trained on. ``None`` (or a map no larger than the window) pools the whole map."""
        if window is not None and window < 1:
            raise InvalidValueError(f"window must be a positive number of res5 positions, got {window}")
        f = self.features(x).mean(dim=2)
        h, w = f.shape[-2:]
        f = F.avg_pool2d(f, (h, w) if window is None else (min(window, h), min(window, w)), stride=1)
        return torch.einsum("bchw,kc->bkhw", f, self.fc.weight) + self.fc.bias[None, :, None, None]

    def fully_convolutional_scores(self, x: Tensor, window: int | None = None) -> Tensor:
        """Softmax at every window of :meth:`forward_dense`, averaged: ``(B, num_classes)``
        probabilities (the authors' fully convolutional test)."""
        return self.forward_dense(x, window).softmax(dim=1).mean(dim=(2, 3))
