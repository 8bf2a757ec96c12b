"""A run's start: the model (seeded alike on every rank), the step split and schedule, the
optimiser, the checkpoint to resume from restored, the folder's other checkpoints set aside,
the DDP wrapper and the run folder (:func:`start_run`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nonlocalnet.data import BadDataLog
from nonlocalnet.engine.checkpoint import CheckpointManager, load_checkpoint, restore_rng_state
from nonlocalnet.engine.config import Config, ConfigError, save_config
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.optim import build_optimizer, scaled_lr
from nonlocalnet.engine.resume import StepSplit, resume_position, resume_schedule
from nonlocalnet.engine.runlog import RunLog
from nonlocalnet.engine.state import RunState, Schedule, total_steps
from nonlocalnet.engine.task import Task
from nonlocalnet.errors import MissingFileError

__all__ = ["start_run"]

log = logging.getLogger("nonlocalnet.train")


@dataclass
class _Parts:
    """What the set-up built, before the resume."""

    model: nn.Module
    memory_format: torch.memory_format
    init_report: str
    split: StepSplit
    schedule: Schedule
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    checkpoints: CheckpointManager
    bad_data: BadDataLog


@dataclass
class _Position:
    """Where the run continues (all zero for a new run)."""

    step: int = 0
    best: float | None = None
    finished: bool = False
    pending: Path | None = None
    rng: dict[str, Any] | None = None  # this rank's saved RNG states, when they apply


def start_run(
    cfg: Config, ctx: DistContext, task: Task, resume: str | Path | bool | None, *, extend: bool
) -> RunState:
    """The run of ``task`` under ``cfg``, set up, resumed from the checkpoint ``resume`` names
    (if any; ``extend``: the run may be longer than the checkpoint's), with its folder open."""
    parts = _set_up(cfg, ctx, task)
    free = tuple(task.resume_free_settings)
    path = parts.checkpoints.latest() if resume is True else (Path(resume) if resume else None)
    if resume is True and path is None:
        raise MissingFileError(f"--resume: no checkpoint in {parts.checkpoints.folder}")
    position = _restore(parts, path, cfg, ctx, free=free, extend=extend) if path is not None else _Position()
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank + position.step)  # dropout masks differ per rank
    if position.rng is not None:
        restore_rng_state(position.rng)
    # the folder's checkpoints and log are this run's past only when it resumes from one of them
    own_past = path is not None and path.resolve().parent == parts.checkpoints.folder.resolve()
    if ctx.is_main:
        _set_aside_other_checkpoints(parts.checkpoints, position.step if own_past else None)
    ctx.barrier()
    net = parts.model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(parts.model, device_ids=device_ids)
    out = Path(cfg.output_dir)
    state = RunState(
        cfg=cfg,
        ctx=ctx,
        task=task,
        model=parts.model,
        optimizer=parts.optimizer,
        scaler=parts.scaler,
        memory_format=parts.memory_format,
        split=parts.split,
        schedule=parts.schedule,
        init_report=parts.init_report,
        checkpoints=parts.checkpoints,
        runlog=RunLog(out, enabled=ctx.is_main, truncate_after=position.step if own_past else None),
        bad_data=parts.bad_data,
        net=net,
        step=position.step,
        best=position.best,
        finished=position.finished,
        pending=position.pending,
        bad_synced=parts.bad_data.count,
    )
    if ctx.is_main:
        _write_run_folder(state, path)
    return state


def _write_run_folder(state: RunState, resumed_from: Path | None) -> None:
    out = Path(state.cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(state.cfg, out / "config.yaml")
    state.task.write_run_files(out)
    log.info("model %s: %s", state.task.label, state.init_report)
    if resumed_from is not None:
        log.info("resumed from %s at step %d", resumed_from, state.step)


def _set_up(cfg: Config, ctx: DistContext, task: Task) -> _Parts:
    """The model (seeded alike on every rank), the step split and schedule, the optimiser and
    scaler."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, init_report = task.build_model()
    if cfg.train.sync_bn and ctx.device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg.train.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    memory_format = task.memory_format(model, ctx.device)
    split = StepSplit(cfg.train.batch_size, cfg.train.grad_accum, ctx.world_size)
    world = (ctx.rank, ctx.world_size) if ctx.distributed else None
    steps_per_epoch = len(task.train_loader(distributed=world, num_workers=0)) // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the training set ({len(task.train_set)} samples) is smaller than one optimiser step "
            f"(train.batch_size {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x "
            f"{ctx.world_size} processes)"
        )
    peak_lr = scaled_lr(cfg.optim, split.samples_per_step)
    total = total_steps(cfg, steps_per_epoch)
    return _Parts(
        model=model,
        memory_format=memory_format,
        init_report=init_report,
        split=split,
        schedule=Schedule(steps_per_epoch, total, total, peak_lr),
        optimizer=build_optimizer(model, cfg.optim, peak_lr),
        scaler=torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None,
        checkpoints=CheckpointManager(Path(cfg.output_dir) / "checkpoints", cfg.checkpoint.keep_last),
        bad_data=BadDataLog(task.sample_noun),
    )


def _restore(
    parts: _Parts, path: Path, cfg: Config, ctx: DistContext, *, free: tuple[str, ...], extend: bool
) -> _Position:
    """Check the checkpoint at ``path`` against ``cfg`` and restore it into ``parts``; the
    position holds this rank's RNG states when the split is the checkpoint's."""
    state: dict[str, Any] = load_checkpoint(path)
    schedule = parts.schedule
    step, own_rng = resume_position(
        state,
        path,
        cfg,
        parts.split,
        schedule.steps_per_epoch,
        parts.model,
        free_settings=free,
        extend=extend,
    )
    schedule.lr_steps = resume_schedule(state, path, cfg, schedule.total, schedule.peak_lr)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scaler is not None and state["scaler"]:
        parts.scaler.load_state_dict(state["scaler"])
    parts.bad_data.merge(state["bad_data"]["bad"])
    # an extended run is not finished at the old end: precise BN runs again at the new one
    finished = bool(state.get("finished", False)) and step >= schedule.total
    pending = path if state.get("pending_validation", False) and not finished else None
    rng = state["rng_per_rank"][ctx.rank] if own_rng else None
    return _Position(step, state["best_metric"], finished, pending, rng)


def _set_aside_other_checkpoints(manager: CheckpointManager, resumed_at: int | None) -> None:
    """Before a run writes its first checkpoint: move out of the way the checkpoints in its
    folder that are not its past. A run resumed from a checkpoint of this folder at step S
    (``resumed_at``) sets aside those after S (the future it discards); a new run, or one
    resumed from elsewhere (``None``), all of them (a used folder)."""
    target, moved = manager.set_aside(resumed_at)
    if moved:
        what = "of a discarded future" if resumed_at is not None else "of another run"
        names = ", ".join(p.name for p in moved)
        log.warning("moved %d checkpoints %s (%s) to %s", len(moved), what, names, target)
