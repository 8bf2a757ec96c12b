"""``AffineChannel``: a per-channel scale and shift (the released code's frozen-BN "affine")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nonlocalnet.errors import InvalidValueError

__all__ = ["AffineChannel"]


class AffineChannel(nn.Module):
    """``y = x * weight[c] + bias[c]`` over dim 1 of ``(B, C, *S)``: BatchNorm with its
    statistics folded in and frozen, as the authors' affine models use (Caffe2 ``AffineNd``,
    blobs ``_bn_s`` and ``_bn_b`` only). Parameters are named like BatchNorm's."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise InvalidValueError(
                f"expected (B, {self.num_features}, ...) input, got shape {tuple(x.shape)}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return str(self.num_features)
