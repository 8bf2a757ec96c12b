""" "Precise BN": re-estimate BatchNorm statistics with the final weights (the paper's recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from nonlocalnet.engine.distributed import DistContext

__all__ = ["update_bn_stats"]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    loader: Iterable,
    num_batches: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    ctx: DistContext | None = None,
) -> int:
    """Replace every BatchNorm's running mean/var by the average of ``num_batches`` training
    batches' statistics (equal weights per batch), averaged over ranks. Returns the batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    means = [torch.zeros_like(m.running_mean) for m in norms]
    variances = [torch.zeros_like(m.running_var) for m in norms]
    was_training = model.training
    model.train()
    used = 0
    for batch in loader:
        if used == num_batches:
            break
        if len(batch.label) == 0:
            continue
        for m in norms:
            m.reset_running_stats()
            m.momentum = 1.0  # running stats := this batch's statistics
        model(batch.video.to(device).contiguous(memory_format=memory_format))
        for m, mean, var in zip(norms, means, variances, strict=True):
            mean += m.running_mean
            var += m.running_var
        used += 1
    count = torch.tensor([float(used)])
    if ctx is not None:  # every rank joins, even one whose batches were all broken
        ctx.all_reduce_sum(count)
        for mean, var in zip(means, variances, strict=True):
            ctx.all_reduce_sum(mean)
            ctx.all_reduce_sum(var)
    if count.item() > 0:
        for m, mean, var in zip(norms, means, variances, strict=True):
            m.running_mean.copy_(mean / count.item())
            m.running_var.copy_(var / count.item())
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return used
