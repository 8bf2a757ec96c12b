""" "Precise BN": re-estimate BatchNorm statistics with the final weights (the paper's recipe)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

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
    *,
    model_input: Callable[[Any], Any] | None = None,
) -> int:
    """Replace every BatchNorm's running mean/var by the average of ``num_batches`` training
    batches' statistics (equal weights per batch), averaged over ranks. Returns the batches used.
    Batches without samples (``len(batch)``, else ``len(batch.label)``, is 0) are skipped.
    ``model_input``: the model's input for a batch (a task's
    :meth:`~nonlocalnet.engine.task.Task.model_input`); default ``batch.video`` on ``device`` in
    ``memory_format``."""
    if model_input is None:

        def model_input(batch: Any) -> Any:
            return batch.video.to(device).contiguous(memory_format=memory_format)

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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
            m.running_mean.copy_(mean / count.item())
            m.running_var.copy_(var / count.item())
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return used


def _batch_statistics(
    model: nn.Module, norms: list[nn.Module], loader: Iterable, num_batches: int, model_input: Callable
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The sums over up to ``num_batches`` non-empty batches of each norm's batch mean and
    variance, and how many batches were used."""
    means = [torch.zeros_like(m.running_mean) for m in norms]
    variances = [torch.zeros_like(m.running_var) for m in norms]
    used = 0
    for batch in loader:
        if used == num_batches:
            break
        if len(batch if hasattr(batch, "__len__") else batch.label) == 0:
            continue
        for m in norms:
            m.reset_running_stats()
            m.momentum = 1.0  # running stats := this batch's statistics
        model(model_input(batch))
        for m, mean, var in zip(norms, means, variances, strict=True):
            mean += m.running_mean
            var += m.running_var
        used += 1
    return means, variances, used
