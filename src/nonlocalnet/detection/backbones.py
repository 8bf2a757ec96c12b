"""The detectors' ResNet-FPN backbones: torchvision's ResNet-18/50/101 bodies and a tiny ResNet
for CPU demos, torchvision's layer freezing (``trainable_backbone_layers``) and the FPN."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models.model_file import read_model_file

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ReceptiveField",
    "TinyResNet",
    "build_body",
    "fpn_backbone",
    "freeze_layers",
    "frozen_eps",
    "load_imagenet_body",
]

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: where the paper's block goes (``block_after``, a module of the body, right
    before the last residual block of res4 = ``layer3``), its channels, and the FPN's inputs
    (``fpn_layers``, their channels ``fpn_in_channels``) and width."""

    block_after: str
    block_channels: int
    fpn_in_channels: tuple[int, ...]
    fpn_out_channels: int
    description: str
    fpn_layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


BACKBONES: dict[str, BackboneSpec] = {
    "r50": BackboneSpec("layer3.4", 1024, (256, 512, 1024, 2048), 256, "ResNet-50-FPN"),
    "r101": BackboneSpec("layer3.21", 1024, (256, 512, 1024, 2048), 256, "ResNet-101-FPN"),
    "r18": BackboneSpec("layer3.0", 256, (64, 128, 256, 512), 256, "ResNet-18-FPN"),
    "tiny": BackboneSpec(
        "layer3.0",
        64,
        (32, 64),
        32,
        "tiny ResNet-FPN (16/32/64 wide, FPN of 32 over strides 4 and 8; for CPU demos)",
        ("layer2", "layer3"),
    ),
}
"""The backbones by short name (``r50``, ``r101``, ``r18``, ``tiny``)."""


@dataclass(frozen=True)
class ReceptiveField:
    """The theoretical receptive field of a feature map: output position ``i`` (along H or W)
    depends only on input pixels ``stride * i + offset - (size - 1) / 2`` to ``... + (size - 1) / 2``."""

    size: int
    stride: int
    offset: float = 0.0

    def bounds(self, i: int) -> tuple[float, float]:
        """The first and last input pixel that output position ``i`` can see (unclipped)."""
        centre = self.stride * i + self.offset
        return centre - (self.size - 1) / 2, centre + (self.size - 1) / 2


class TinyResNet(nn.Module):
    """A torchvision-style ResNet body with :class:`~torchvision.models.resnet.BasicBlock`\\ s:
    a 3x3 stride-2 stem (``conv1``, ``bn1``, ``relu``; no max pool), then ``layer1`` to
    ``layer3`` (``widths``, ``blocks``; strides 1, 2, 2). ``(B, 3, H, W) -> (B, 64, H/8, W/8)``.

    Its ``layer3`` output sees :meth:`receptive_field` ``("layer3")`` = 79 x 79 pixels (+-39): the
    CPU demo relies on that baseline not seeing far-away context."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks: tuple[int, ...] = (1, 1, 2),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise InvalidValueError(f"widths {widths} and blocks {blocks} must have the same length")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for b in range(count):
                downsample = None
                if b == 0 and (stride != 1 or inplanes != width):
                    downsample = nn.Sequential(resnet.conv1x1(inplanes, width, stride), norm_layer(width))
                layers.append(
                    resnet.BasicBlock(
                        inplanes, width, stride if b == 0 else 1, downsample, norm_layer=norm_layer
                    )
                )
                inplanes = width
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.num_layers = len(widths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{index}")(x)
        return x

    def receptive_field(self, layer: str = "layer3") -> ReceptiveField:
        """The theoretical receptive field of ``layer``'s output (``"conv1"``, ``"layer1"``...),
        from the kernels and strides of the convs on the main path (the shortcuts' 1x1 convs see
        less)."""
        names = ["conv1", *(f"layer{i}" for i in range(1, self.num_layers + 1))]
        if layer not in names:
            raise InvalidValueError(f"unknown layer {layer!r}; expected one of {names}")
        convs: list[nn.Conv2d] = [self.conv1]
        for name in names[1 : names.index(layer) + 1]:
            for block in getattr(self, name):
                convs += [block.conv1, block.conv2]
        size, stride, offset = 1, 1, 0.0
        for conv in convs:
            k, s, p = conv.kernel_size[0], conv.stride[0], int(conv.padding[0])
            size += (k - 1) * stride
            offset += ((k - 1) / 2 - p) * stride
            stride *= s
        return ReceptiveField(size, stride, offset)


def build_body(backbone: str, norm_layer: NormLayer) -> nn.Module:
    """A randomly initialised ResNet body for ``backbone`` (a key of :data:`BACKBONES`)."""
    if backbone == "tiny":
        return TinyResNet(norm_layer=norm_layer)
    maker = {"r18": resnet.resnet18, "r50": resnet.resnet50, "r101": resnet.resnet101}[backbone]
    return maker(weights=None, norm_layer=norm_layer)


def load_imagenet_body(body: nn.Module, path: str | os.PathLike) -> None:
    """Load an ImageNet ResNet state dict file (torchvision's names: ``conv1.weight``,
    ``layer1.0.bn1.running_mean``, ..., ``fc.*``) into ``body``; every key must match."""
    state = read_model_file(path, kinds=("safetensors", "checkpoint", "state_dict")).state
    own = body.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs body {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape)
    ]
    if wrong:  # load_state_dict would raise a bare RuntimeError
        raise InvalidValueError(
            f"weights_backbone {os.fspath(path)} does not fit this {type(body).__name__} "
            f"({len(wrong)} shapes differ): {wrong[:4]}"
        )
    result = body.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InvalidValueError(
            f"weights_backbone {os.fspath(path)} is not a {type(body).__name__} state dict: "
            f"missing {result.missing_keys[:8]} ({len(result.missing_keys)}), "
            f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
        )


_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_layers(body: nn.Module, trainable_layers: int) -> None:
    """torchvision's ``trainable_backbone_layers``: keep the last ``trainable_layers`` of
    ``layer4, layer3, layer2, layer1, conv1`` trainable (5: also ``bn1``, all), freeze the rest.
    The tiny body has no ``layer4``: there ``k`` trains ``k - 1`` stages."""
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int):
        raise InvalidValueError(f"trainable_backbone_layers must be an int 0..5, got {trainable_layers!r}")
    if not 0 <= trainable_layers <= 5:
        raise InvalidValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_layers}")
    train = list(_TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, param in body.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            param.requires_grad_(False)


def fpn_backbone(body: nn.Module, backbone: str) -> BackboneWithFPN:
    """``body`` with torchvision's FPN over its ``fpn_layers`` plus ``LastLevelMaxPool`` (feature
    maps ``"0"``, ``"1"``, ... and ``"pool"``); ``fc`` and ``avgpool`` are dropped."""
    spec = BACKBONES[backbone]
    returned = {layer: str(i) for i, layer in enumerate(spec.fpn_layers)}
    return BackboneWithFPN(
        body,
        returned,
        list(spec.fpn_in_channels),
        spec.fpn_out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def frozen_eps(model: nn.Module, eps: float) -> None:
    """Set the ``eps`` of every FrozenBatchNorm2d (torchvision's COCO_V1 weights use 0)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
