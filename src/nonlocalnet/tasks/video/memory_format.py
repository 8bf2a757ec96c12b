"""The video task's memory layout: time a model on its device in the contiguous and the
channels_last_3d layouts and keep the faster (``train.memory_format: auto``)."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from nonlocalnet.errors import InvalidValueError

__all__ = ["choose_memory_format"]


def _time(model: nn.Module, x: Tensor, repeats: int) -> float:
    best = float("inf")
    with torch.no_grad():
        model(x)  # warm-up (kernel selection, allocations)
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            best = min(best, time.perf_counter() - start)
    return best


def choose_memory_format(model: nn.Module, example: Tensor, repeats: int = 2) -> torch.memory_format:
    """Time ``model(example)`` in both layouts and leave ``model`` in the faster one.

    Returns ``torch.channels_last_3d`` or ``torch.contiguous_format``; inputs should then be
    converted with ``x.contiguous(memory_format=...)``. The model's train/eval mode is kept.
    """
    if example.dim() != 5:
        raise InvalidValueError(
            f"expected a 5-D example clip (B, C, T, H, W), got shape {tuple(example.shape)}"
        )
    was_training = model.training
    model.eval()
    timings: dict[torch.memory_format, float] = {}
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        model.to(memory_format=fmt)
        timings[fmt] = _time(model, example.contiguous(memory_format=fmt), repeats)
    best = min(timings, key=lambda fmt: timings[fmt])
    model.to(memory_format=best)
    model.train(was_training)
    return best
