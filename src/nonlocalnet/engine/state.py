"""A training run's state, as the loop and its hooks read and move it (:class:`RunState`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nonlocalnet.data import BadDataLog
from nonlocalnet.engine.checkpoint import CheckpointManager, capture_rng_state
from nonlocalnet.engine.config import Config, ConfigError, config_to_dict
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.resume import CHECKPOINT_FORMAT, StepSplit
from nonlocalnet.engine.runlog import RunLog
from nonlocalnet.engine.task import Evaluation, Task

__all__ = ["RunState", "SavedCheckpoint", "Schedule", "total_steps"]


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    """The run's optimiser steps: ``train.iterations``, else ``train.epochs`` epochs."""
    if cfg.train.iterations:
        return cfg.train.iterations
    if cfg.train.epochs:
        return cfg.train.epochs * steps_per_epoch
    raise ConfigError("set train.iterations (optimiser steps) or train.epochs")


@dataclass
class Schedule:
    """The run's length: ``steps_per_epoch``, ``total`` steps, ``lr_steps`` (the length the lr
    milestones are fractions of: ``total``, unless a resume extended the run) and the peak lr."""

    steps_per_epoch: int
    total: int
    lr_steps: int
    peak_lr: float


@dataclass(frozen=True)
class SavedCheckpoint:
    """The last checkpoint the run wrote: where, and what (written again with its validation's
    outcome)."""

    path: Path
    contents: dict[str, Any]


@dataclass
class RunState:
    """One run: what the set-up built, and the position that moves as it goes (``step``: the
    optimiser steps done; ``epoch``: the epoch of the step being taken; ``lr``: its learning
    rate; ``best``: the best validation metric; ``finished``: resumed from the final checkpoint,
    precise BN done; ``pending``: resumed from this checkpoint, whose validation is still to run)."""

    cfg: Config
    ctx: DistContext
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    memory_format: torch.memory_format
    split: StepSplit
    schedule: Schedule
    init_report: str
    checkpoints: CheckpointManager
    runlog: RunLog
    bad_data: BadDataLog
    net: nn.Module  # the model as trained (DDP-wrapped in a multi-process run)
    step: int = 0
    epoch: int = 0
    lr: float = 0.0
    best: float | None = None
    finished: bool = False
    pending: Path | None = None
    saved: SavedCheckpoint | None = None
    last_evaluation: Evaluation | None = None
    bad_synced: int = 0  # the bad-data log's size after the ranks last shared it

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def samples_seen(self) -> int:
        return self.step * self.split.samples_per_step

    def schedule_record(self) -> dict[str, int]:
        """The run's length and the length its lr milestones are fractions of (they differ once
        a resume extended the run): what :func:`~nonlocalnet.engine.resume.resume_schedule` reads."""
        return {"steps": self.schedule.total, "lr_schedule_steps": self.schedule.lr_steps}

    def checkpoint_contents(self) -> dict[str, Any]:
        """The checkpoint now; a collective (every rank's RNG state): call it on every rank.
        ``progress`` is the position as epoch + samples taken in that epoch, with the step split
        that produced it, so a resume can check (and map) it. ``rng_per_rank``: every process's
        RNG states, in rank order."""
        rng = self.ctx.gather_objects(capture_rng_state())
        epoch, in_epoch = divmod(self.step, self.schedule.steps_per_epoch)
        split = self.split
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng_per_rank": rng,
            "step": self.step,
            "schedule": self.schedule_record(),
            "progress": {
                "epoch": epoch,
                "samples": in_epoch * split.samples_per_step,
                "batch_size": split.batch_size,
                "grad_accum": split.grad_accum,
                "processes": split.processes,
            },
            "config": config_to_dict(self.cfg),
            **self.task.checkpoint_extras(),
            "bad_data": self.bad_data.summary(),
            "best_metric": self.best,
        }
