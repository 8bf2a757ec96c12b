"""The paper's optimiser: SGD with Nesterov momentum, no weight decay on normalisation layers,
lr scaled linearly with the batch, step schedule with linear warm-up."""

from __future__ import annotations

import bisect
from typing import Any

import torch
from torch import nn

from nonlocalnet.engine.config import OptimConfig
from nonlocalnet.layers import AffineChannel, NonLocalBlock

__all__ = ["build_optimizer", "lr_at", "milestone_steps", "scaled_lr", "set_lr"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, AffineChannel)


def scaled_lr(cfg: OptimConfig, total_batch_size: int) -> float:
    """``base_lr * total_batch_size / base_batch_size`` (the linear scaling rule)."""
    return cfg.base_lr * total_batch_size / cfg.base_batch_size


def milestone_steps(cfg: OptimConfig, total_steps: int) -> list[int]:
    """The optimiser steps at which the learning rate drops: ``lr_milestones`` (fractions) of
    ``total_steps``, rounded."""
    return [round(m * total_steps) for m in sorted(cfg.lr_milestones)]


def lr_at(step: int, total_steps: int, peak_lr: float, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): ``peak_lr * gamma ** k`` after the
    k-th milestone (fractions of ``total_steps``, :func:`milestone_steps`), ramped linearly from
    ``warmup_factor *`` over the first ``warmup_iters`` steps. ``total_steps`` is the length of
    the schedule, not necessarily of the run: a run extended on resume keeps its first length
    here, so its milestones keep their steps and the steps past that length stay at the last
    milestone's rate."""
    lr = peak_lr * cfg.lr_gamma ** bisect.bisect_right(milestone_steps(cfg, total_steps), step)
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        lr *= cfg.warmup_factor * (1 - alpha) + alpha
    return lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.SGD:
    """SGD over two groups: normalisation parameters (``weight_decay_norm``, 0 in the paper) and
    everything else (``weight_decay``). With ``nonlocal_lr_mult != 1`` the non-local blocks'
    parameters form up to two more groups of their own; every group carries its ``lr_mult`` and
    starts at ``lr * lr_mult`` (:func:`set_lr` sets it for each step)."""
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
    }
    block_params = (
        {id(p) for m in model.modules() if isinstance(m, NonLocalBlock) for p in m.parameters()}
        if cfg.nonlocal_lr_mult != 1.0
        else set()
    )
    groups: dict[tuple[bool, bool], dict[str, Any]] = {
        (block, norm): {
            "params": [],
            "weight_decay": cfg.weight_decay_norm if norm else cfg.weight_decay,
            "lr_mult": cfg.nonlocal_lr_mult if block else 1.0,
            "lr": lr * (cfg.nonlocal_lr_mult if block else 1.0),
        }
        for block in (False, True)
        for norm in (False, True)
    }
    for p in model.parameters():
        if p.requires_grad:
            groups[id(p) in block_params, id(p) in norm_params]["params"].append(p)
    return torch.optim.SGD(
        [g for g in groups.values() if g["params"]], lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_mult`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
