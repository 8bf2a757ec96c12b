"""Evaluation and prediction for any task (:class:`~nonlocalnet.engine.task.Task`): the task's
model with the given weights, evaluated on its validation data or run on inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nonlocalnet.engine.config import Config, ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext, init_distributed, resolve_device
from nonlocalnet.engine.task import Evaluation, Task, build_task
from nonlocalnet.errors import InvalidTypeError

__all__ = ["evaluate", "predict"]


def _model(task: Task, weights: str | os.PathLike | None, device: torch.device) -> nn.Module:
    """The task's model with ``weights`` (else its initial ones), on ``device``, in eval mode."""
    model, _ = task.build_model()
    if weights is not None:
        task.load_weights(model, Path(weights))
    return model.to(device).eval()


def evaluate(
    cfg: Config,
    *,
    weights: str | os.PathLike | None = None,
    task: Task | None = None,
    ctx: DistContext | None = None,
) -> Evaluation:
    """Evaluate the model of ``cfg.task`` (or ``task``) on its validation data: with the
    ``weights`` file (a checkpoint or weights the task's ``load_weights`` reads), else its
    initial weights. ``ctx``: the processes (default: from torchrun's environment); every rank
    takes part and gets the same :class:`~nonlocalnet.engine.task.Evaluation`."""
    check_config(cfg, "evaluate(cfg)")
    task = task if task is not None else build_task(cfg)
    if not task.has_validation:
        raise ConfigError(f"evaluate: the {task.label} task of this config has no validation data")
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device, cfg.train.dist_timeout_s)
    model = _model(task, weights, ctx.device)
    evaluation = task.evaluate(model, ctx, memory_format=task.memory_format(model, ctx.device))
    if own_ctx:
        ctx.shutdown()
    return evaluation


def predict(
    cfg: Config,
    inputs: Sequence[Any],
    *,
    weights: str | os.PathLike | None = None,
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """The predictions of the model of ``cfg.task`` (or ``task``) with the ``weights`` file
    (else its initial weights) for ``inputs`` (what the task predicts on, e.g. file paths), one
    JSON-able dict per input, on ``cfg.device``."""
    check_config(cfg, "predict(cfg)")
    if isinstance(inputs, str | os.PathLike):
        raise InvalidTypeError(
            f"predict: inputs must be a sequence (a list of paths), got one input: {inputs!r}"
        )
    task = task if task is not None else build_task(cfg)
    device = resolve_device(cfg.device)
    return task.predict(_model(task, weights, device), list(inputs), device=device)
