"""The paper's optimiser: SGD with Nesterov momentum, no weight decay on normalisation layers,
lr scaled linearly with the batch, step schedule with linear warm-up."""

from __future__ import annotations

import bisect

import torch
from torch import nn

from nonlocalnet.engine.config import OptimConfig
from nonlocalnet.layers import AffineChannel

__all__ = ["build_optimizer", "lr_at", "scaled_lr"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, AffineChannel)


def scaled_lr(cfg: OptimConfig, total_batch_size: int) -> float:
    """``base_lr * total_batch_size / base_batch_size`` (the linear scaling rule)."""
    return cfg.base_lr * total_batch_size / cfg.base_batch_size


def lr_at(step: int, total_steps: int, peak_lr: float, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): ``peak_lr * gamma ** k`` after the
    k-th milestone (fractions of ``total_steps``), ramped linearly from ``warmup_factor *`` over
    the first ``warmup_iters`` steps."""
    milestones = [round(m * total_steps) for m in sorted(cfg.lr_milestones)]
    lr = peak_lr * cfg.lr_gamma ** bisect.bisect_right(milestones, step)
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        lr *= cfg.warmup_factor * (1 - alpha) + alpha
    return lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.SGD:
    """SGD over two groups: normalisation parameters (``weight_decay_norm``, 0 in the paper) and
    everything else (``weight_decay``)."""
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in norm_params else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": cfg.weight_decay_norm},
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]], lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
