"""1x1 convolutions of the non-local block as batched matrix products on position sequences.

The block's ``theta``, ``phi``, ``g`` and ``W_z`` are 1x1 convs (modules and state dict keys
as in the paper's code). With ``NonLocalBlock(projection="gemm")`` they are computed from their
weights as batched GEMMs over a ``(B, N, C)`` view of the input instead of calling the modules
(phi and g as one product): this gives the row-major ``(B, N, C)`` sequences the attention
kernels want without a copy, and on CPU avoids the slow backward of 1x1x1 ``conv3d`` (the whole
block's forward + backward is 1.3-1.5x faster at the video models' shapes:
``benchmarks/projections.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

from nonlocalnet.errors import InvalidValueError

__all__ = ["channels_first", "pointwise", "pointwise_channels_first", "to_sequence"]


def to_sequence(t: Tensor) -> Tensor:
    """``(B, C, *S) -> (B, N, C)`` with ``N = prod(S)`` in row-major order of ``S``: a view, never a
    copy, for channel-first and channels-last tensors alike."""
    last = t.dim() - 1  # explicit, not -1: TorchScript's ONNX export mistranslates negative dims
    return t.movedim(1, last).flatten(1, last - 1)


def channels_first(seq: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(B, N, C) -> (B, C, *S)``: the inverse view of :func:`to_sequence`."""
    return seq.reshape(seq.shape[0], *spatial, seq.shape[2]).movedim(len(spatial) + 1, 1)


def _weight(conv: _ConvNd) -> Tensor:
    if any(k != 1 for k in conv.kernel_size) or conv.groups != 1:
        raise InvalidValueError(f"expected a 1x1 convolution without groups, got {conv}")
    return conv.weight.flatten(1)


def pointwise(seq: Tensor, convs: Sequence[_ConvNd]) -> Tensor:
    """The 1x1 convs ``convs`` applied to a ``(B, N, C)`` sequence, concatenated along the
    channels: ``(B, N, sum of their out_channels)``, one batched GEMM (the weight is broadcast
    over the batch, not copied)."""
    w = torch.cat([_weight(c) for c in convs]) if len(convs) > 1 else _weight(convs[0])
    biases = [c.bias for c in convs if c.bias is not None]
    if biases and len(biases) != len(convs):
        raise InvalidValueError("pointwise() needs all of the convs with a bias or all without")
    bias = None if not biases else torch.cat(biases) if len(biases) > 1 else biases[0]
    b = seq.shape[0]
    w = w.t().expand(b, w.shape[1], w.shape[0])
    return torch.bmm(seq, w) if bias is None else torch.baddbmm(bias, seq, w)


def pointwise_channels_first(seq: Tensor, conv: _ConvNd) -> Tensor:
    """The 1x1 conv ``conv`` applied to a ``(B, N, C)`` sequence, channel-first: ``(B, Co, N)``."""
    w = _weight(conv)
    w = w.expand(seq.shape[0], *w.shape)
    if conv.bias is None:
        return torch.bmm(w, seq.transpose(1, 2))
    return torch.baddbmm(conv.bias[:, None], w, seq.transpose(1, 2))
