""" "Precise BN": re-estimate BatchNorm statistics with the final weights (the paper's recipe)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn

from nonlocalnet.engine.distributed import DistContext

__all__ = ["update_bn_stats"]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    loader: Iterable[Sized],
    num_batches: int,
    *,
    model_input: Callable[[Any], Any],
    ctx: DistContext | None = None,
) -> int:
    """Replace every BatchNorm's running mean/var by the average of ``num_batches`` training
    batches' statistics (equal weights per batch), averaged over the ranks of ``ctx``. Returns
    the batches used. Batches without samples (``len(batch) == 0``) are skipped.
    ``model_input``: the model's input for a batch, on the model's device (a task's
    :meth:`~nonlocalnet.engine.task.Task.model_input`)."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    model.train()
    means, variances, used = _batch_statistics(model, norms, loader, num_batches, model_input)
    count = torch.tensor([float(used)])
    if ctx is not None:  # every rank joins, even one whose batches were all broken
        ctx.all_reduce_sum(count)
        for mean, var in zip(means, variances, strict=True):
            ctx.all_reduce_sum(mean)
            ctx.all_reduce_sum(var)
    if count.item() > 0:
        for m, mean, var in zip(norms, means, variances, strict=True):
            _running(m)[0].copy_(mean / count.item())
            _running(m)[1].copy_(var / count.item())
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return used


def _batch_statistics(
    model: nn.Module,
    norms: list[nn.modules.batchnorm._BatchNorm],
    loader: Iterable[Sized],
    num_batches: int,
    model_input: Callable[[Any], Any],
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The sums over up to ``num_batches`` non-empty batches of each norm's batch mean and
    variance, and how many batches were used."""
    means = [torch.zeros_like(_running(m)[0]) for m in norms]
    variances = [torch.zeros_like(_running(m)[1]) for m in norms]
    used = 0
    for batch in loader:
        if used == num_batches:
            break
        if len(batch) == 0:
            continue
        for m in norms:
            m.reset_running_stats()
            m.momentum = 1.0  # running stats := this batch's statistics
        model(model_input(batch))
        for m, mean, var in zip(norms, means, variances, strict=True):
            running_mean, running_var = _running(m)
            mean += running_mean
            var += running_var
        used += 1
    return means, variances, used


def _running(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm's running mean and variance (the norms here keep them)."""
    assert norm.running_mean is not None and norm.running_var is not None
    return norm.running_mean, norm.running_var
