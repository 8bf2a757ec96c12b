"""Parameters and multiply-adds of a model, counted with torch's own FLOP counter."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Complexity", "measure_complexity"]


@dataclass(frozen=True)
class Complexity:
    params: int
    gmacs: float  # multiply-adds / 1e9 ("GFLOPs" in the paper's sense)
    by_op: dict[str, float]  # multiply-adds / 1e9 per aten op
    input_shape: tuple[int, ...]


def measure_complexity(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 224, 224)) -> Complexity:
    """Count parameters and multiply-adds of one forward pass at ``input_shape``.

    Runs a structural copy of the model on the meta device (no memory, no compute);
    ``torch.utils.flop_counter`` counts 2 FLOPs per multiply-add, so its
    total is halved. The non-local attention products are counted (as ``bmm``/attention ops).
    """
    params = sum(p.numel() for p in model.parameters())
    meta = _meta_copy(model).eval()
    x = torch.empty(input_shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    by_op = {str(k): v / 2e9 for k, v in counter.get_flop_counts()["Global"].items()}
    return Complexity(params, counter.get_total_flops() / 2e9, by_op, tuple(input_shape))


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose tensors live on the meta device (no data copied)."""
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)
