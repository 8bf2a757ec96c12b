"""The one training loop, for any task (:class:`~nonlocalnet.engine.task.Task`): the paper's
recipe, resumable at any checkpoint (bit-exact on CPU), distributed through torchrun, robust to
broken samples.

:func:`train` sets up a :class:`_Run` (the model, optimiser and position), and ``_train`` is
the loop: ``_resume``, then per step ``_optimisation_step`` and ``_after_step`` (log record,
end-of-epoch validation, checkpoint), then ``_finish``. Checkpoints, exact resume, DDP, AMP,
gradient accumulation, logging and bad-data accounting live here; the task supplies the model,
data, loss and evaluation. The engine imports no task: ``cfg.task`` names one
(:data:`~nonlocalnet.engine.task.TASKS`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nonlocalnet.data import BadDataLog, FrameCache
from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.checkpoint import (
    RESUME_FREE_SETTINGS,
    CheckpointManager,
    capture_rng_state,
    changed_settings,
    load_checkpoint,
    restore_rng_state,
)
from nonlocalnet.engine.config import Config, ConfigError, check_config, config_to_dict, save_config
from nonlocalnet.engine.distributed import DistContext, init_distributed, is_out_of_memory
from nonlocalnet.engine.optim import build_optimizer, lr_at, milestone_steps, scaled_lr, set_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.runlog import RunLog
from nonlocalnet.engine.task import Evaluation, Task, build_task
from nonlocalnet.errors import MissingFileError, ValidationError
from nonlocalnet.models import save_weights

__all__ = ["TrainResult", "train"]

log = logging.getLogger("nonlocalnet.train")

# the run's length: the settings a resume with ``extend`` may change (the schedule grows)
EXTEND_SETTINGS = ("train.epochs", "train.iterations")


@dataclass
class TrainResult:
    """What a finished run produced (paths under ``output_dir``) and its final numbers."""

    output_dir: Path
    steps: int
    final_eval: dict[str, Any] | None
    bad_data: dict[str, Any]
    seconds: float


def _total_steps(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.iterations:
        return cfg.train.iterations
    if cfg.train.epochs:
        return cfg.train.epochs * steps_per_epoch
    raise ConfigError("set train.iterations (optimiser steps) or train.epochs")


@dataclass(frozen=True)
class _Layout:
    """How an optimiser step is made: clips per process per micro-batch, micro-batches per
    step, processes."""

    batch_size: int
    grad_accum: int
    processes: int

    @property
    def clips_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.processes

    def steps_per_epoch(self, num_videos: int) -> int:
        """As the training loader gives them: the epoch's permutation cut to a multiple of the
        processes, full micro-batches per process, full steps."""
        per_process = (num_videos - num_videos % self.processes) // self.processes
        return per_process // self.batch_size // self.grad_accum


def _split_sensitive(model: nn.Module) -> list[str]:
    """What makes this model's training depend on how a step's clips are split over processes
    and micro-batches (not only on which clips a step holds)."""
    reasons = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        reasons.append("BatchNorm uses the statistics of each process's micro-batch")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        reasons.append("each process draws its own dropout masks")
    return reasons


def _saved_position(
    state: dict[str, Any], path: Path, layout: _Layout, num_videos: int
) -> tuple[_Layout, dict[str, int]]:
    """The step layout a checkpoint was written with and its position (epoch, clips taken in
    it); a format-v1 checkpoint recorded neither, so both are rebuilt from its config."""
    progress = state.get("progress")
    if progress is not None:
        return _Layout(progress["batch_size"], progress["grad_accum"], progress["processes"]), progress
    train_saved = state.get("config", {}).get("train", {})
    old = _Layout(
        train_saved.get("batch_size", layout.batch_size),
        train_saved.get("grad_accum", layout.grad_accum),
        layout.processes,
    )
    log.warning(
        "%s predates recording the number of processes; assuming it was written by %d", path, layout.processes
    )
    epoch, in_epoch = divmod(state["step"], max(old.steps_per_epoch(num_videos), 1))
    return old, {"epoch": epoch, "samples": in_epoch * old.clips_per_step}


def _layout_problems(old: _Layout, new: _Layout, model: nn.Module) -> tuple[list[str], list[str], str]:
    """The layout changes, those that forbid an exact resume, and why."""
    changes = [
        f"{name} {a} -> {b}"
        for name, a, b in (
            ("train.batch_size", old.batch_size, new.batch_size),
            ("train.grad_accum", old.grad_accum, new.grad_accum),
            ("processes", old.processes, new.processes),
        )
        if a != b
    ]
    if not changes:
        return changes, [], ""
    sensitive = _split_sensitive(model)
    if old.clips_per_step != new.clips_per_step:
        return (
            changes,
            changes,
            (
                f" The clips per optimiser step (train.batch_size x train.grad_accum x processes) "
                f"change from {old.clips_per_step} to {new.clips_per_step}, so the step count, "
                "learning rate and data order of the checkpoint no longer apply."
            ),
        )
    if sensitive:
        return (
            changes,
            changes,
            (
                f" The {new.clips_per_step} clips per step are the same but split differently, and "
                f"{' and '.join(sensitive)}."
            ),
        )
    return changes, [], ""


def _resume_position(
    state: dict[str, Any],
    path: Path,
    cfg: Config,
    layout: _Layout,
    spe: int,
    num_videos: int,
    model: nn.Module,
    *,
    extend: bool = False,
) -> tuple[int, bool]:
    """Check that the checkpoint at ``path`` can be continued exactly under ``cfg`` and
    ``layout`` (``spe`` steps per epoch over ``num_videos`` videos); returns the step to continue
    at and whether each rank's saved RNG state applies.

    The continuation is exact when every setting that shapes the weights is the checkpoint's
    (logging, checkpointing, evaluation and loading settings may change:
    :data:`RESUME_FREE_SETTINGS`; with ``extend``, the run's length too: :data:`EXTEND_SETTINGS`,
    checked by :func:`_resume_schedule`). The step layout (``train.batch_size``, ``train.grad_accum``,
    processes) may change only if the clips per step stay the same and the model is not
    split-sensitive (no BatchNorm, no dropout): each step then sees the same clips, and the run
    equals the uninterrupted one up to floating-point rounding. Otherwise a :class:`ConfigError`
    names each changed setting.
    """
    old, progress = _saved_position(state, path, layout, num_videos)
    free = (*RESUME_FREE_SETTINGS, "train.batch_size", "train.grad_accum")
    free += EXTEND_SETTINGS if extend else ()
    changed = changed_settings(
        state.get("config", {}), config_to_dict(cfg), free=free, defaults=config_to_dict(type(cfg)())
    )
    layout_changes, refused, why = _layout_problems(old, layout, model)
    problems = [f"{key} {a!r} -> {b!r}" for key, a, b in changed] + refused
    if problems:
        if any(key in EXTEND_SETTINGS for key, _, _ in changed):
            why += (
                " To train longer from this checkpoint, ask for it: train --extend (train(..., "
                "extend=True)) lets train.epochs / train.iterations grow; the lr milestones keep their steps."
            )
        raise ConfigError(
            f"cannot resume exactly from {path}: changed since the checkpoint: {', '.join(problems)}."
            f"{why} Resume with the checkpoint's settings, or start a new run from its weights "
            f"(model.init=checkpoint model.init_path={path})."
        )
    in_epoch, epoch = progress["samples"] // layout.clips_per_step, progress["epoch"]
    if in_epoch >= spe:  # the new layout's epoch is shorter: this one is over
        epoch, in_epoch = epoch + 1, 0
    step = epoch * spe + in_epoch
    if layout_changes:
        log.warning(
            "resuming with %s: the same %d clips per step, split differently; the result equals "
            "an uninterrupted run up to floating-point rounding",
            ", ".join(layout_changes),
            layout.clips_per_step,
        )
    if step != state["step"]:
        log.info("checkpoint step %d is step %d with %d steps per epoch", state["step"], step, spe)
    return step, old == layout and len(state.get("rng_per_rank", [])) == layout.processes


def _resume_schedule(
    state: dict[str, Any], path: Path, cfg: Config, total: int, spe: int, peak_lr: float
) -> int:
    """The length of the lr schedule (what :func:`lr_at` takes as ``total_steps``) for a run of
    ``total`` steps resumed from the checkpoint ``state`` at ``path`` (``spe`` steps per epoch,
    ``peak_lr`` for the log).

    A run keeps the schedule it started with: the milestones are fractions of its first length,
    recorded in each checkpoint (``schedule``). Extended (:data:`EXTEND_SETTINGS` changed, which
    :func:`_resume_position` allows only with ``extend``), the run is longer than the
    checkpoint's; the milestones then keep their steps, so every step up to the checkpoint had
    the lr it had, and the added steps continue at the lr of the checkpoint's last step (as
    PySlowFast's absolute ``SOLVER.STEPS`` do when ``MAX_EPOCH`` grows). A shorter run is refused."""
    saved = state.get("schedule")
    if saved is not None:
        old_total, schedule = saved["steps"], saved["lr_schedule_steps"]
    else:  # written before the schedule was recorded: its config's length (iterations win)
        length = state.get("config", {}).get("train", {})
        old_total = length.get("iterations") or length.get("epochs", 0) * spe or total
        schedule = old_total
    if total < old_total:
        raise ConfigError(
            f"cannot resume from {path} with a shorter run: train.epochs {cfg.train.epochs} / "
            f"train.iterations {cfg.train.iterations} give {total} steps, the checkpoint's run has "
            f"{old_total}. --extend only lengthens a run; to stop earlier, use the checkpoint of "
            "that step (model.init=checkpoint for a new run)"
        )
    if total > old_total:
        cut = milestone_steps(cfg.optim, schedule)
        log.info(
            "extending the run from %d to %d steps: the lr milestones stay at steps %s (of the "
            "%d-step schedule); the steps after %d have lr %.4g",
            old_total,
            total,
            cut,
            schedule,
            old_total,
            lr_at(old_total, schedule, peak_lr, cfg.optim),
        )
    return schedule


@dataclass
class _Run:
    """One run's state, passed from step to step: what the set-up built, and the position
    (``step``, ``best``, clips ``seen``) that moves as the run goes."""

    cfg: Config
    ctx: DistContext
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    fmt: torch.memory_format
    layout: _Layout
    steps_per_epoch: int
    total: int
    schedule_steps: int  # the length the lr milestones are fractions of (total, unless extended)
    peak_lr: float
    init_report: str
    manager: CheckpointManager
    net: nn.Module | None = None  # the model as trained (DDP-wrapped in a multi-process run)
    runlog: RunLog | None = None
    bad_log: BadDataLog = field(default_factory=BadDataLog)
    step: int = 0
    best: float | None = None
    seen: int = 0
    bad_synced: int = 0
    window: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # resumed from the final checkpoint (precise BN done)
    pending: Path | None = None  # resumed from this checkpoint, whose validation is still to run

    @property
    def device(self) -> torch.device:
        return self.ctx.device


def train(
    cfg: Config,
    *,
    resume: str | Path | bool | None = None,
    ctx: DistContext | None = None,
    frame_cache: FrameCache | None = None,
    progress_desc: str | None = None,
    progress_position: int | None = None,
    task: Task | None = None,
    extend: bool = False,
) -> TrainResult:
    """Train the task ``cfg.task`` names (default: video classification of ``cfg.model`` on
    ``cfg.data``) and write everything under ``cfg.output_dir``.

    ``resume``: ``True`` continues from the newest checkpoint in the output folder, a path from
    that checkpoint. Model, optimiser, scaler, every process's RNG states and the position
    (epoch + clips taken in it) are restored, so the run continues exactly where the checkpoint
    was taken. Settings that shape the weights must be the checkpoint's; only the split of a
    step's clips over ``train.batch_size``/``train.grad_accum``/processes may change, and only
    for models without BatchNorm or dropout (then equal up to rounding); anything else is a
    :class:`ConfigError` naming the changed settings (e.g. ``train.batch_size 2 -> 4``).
    ``extend``: the resumed run may also be longer (``train.epochs``/``train.iterations``
    grown): the steps up to the checkpoint stay as they were, the lr milestones keep their steps
    and the added steps continue at the checkpoint's last lr (docs/training.md).
    Checkpoints in the folder that are not this run's past (a new run in a used folder: all; a
    resume at step S: those after S) are moved to ``checkpoints/superseded-<time>/`` first, so
    neither rotation nor ``resume=True`` confuses them with this run's. ``frame_cache``: a
    decoded-video cache shared with other runs in this process (else ``data.cache_frames``).
    ``progress_desc``/``progress_position``: the progress bar's label and line, for several
    runs side by side. ``task``: a :class:`~nonlocalnet.engine.task.Task` object to train
    instead of the one ``cfg.task`` names.
    """
    check_config(cfg, "train(cfg)")
    if extend and not resume:
        raise ConfigError("extend (train --extend) lengthens a resumed run: give the checkpoint (--resume)")
    started = time.perf_counter()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device, cfg.train.dist_timeout_s)
    # on an error, no shutdown: destroying the group would wait for a dead peer
    autocast_context(cfg.train.amp, ctx.device)  # fp16 without CUDA: an error before any work
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    task = task if task is not None else build_task(cfg, frame_cache=frame_cache)
    bar = {"desc": progress_desc or f"train {task.label}", "position": progress_position}
    result = _train(_set_up(cfg, ctx, task), resume, started, bar, extend)
    if own_ctx:
        ctx.shutdown()
    return result


def _train(
    run: _Run, resume: str | Path | bool | None, started: float, bar_options: dict, extend: bool
) -> TrainResult:
    """The loop: resume, then optimisation steps (each followed by logging, validation and
    checkpoints as due) until ``run.total``, then the finish."""
    _resume(run, resume, extend)
    if run.pending is not None:
        _pending_validation(run, run.pending)
    bar = _progress_bar(run, bar_options)
    epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
    loader = _train_loader(run, epoch, in_epoch * run.cfg.train.grad_accum, run.cfg.data.num_workers)
    while run.step < run.total:
        epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
        batches = _start_epoch(run, loader, epoch)
        for _ in range(in_epoch, run.steps_per_epoch):
            lr = _optimisation_step(run, batches)
            _after_step(run, bar, epoch, lr)
            if run.step >= run.total:
                break
    bar.close()
    return _finish(run, loader, started)


def _set_up(cfg: Config, ctx: DistContext, task: Task) -> _Run:
    """The model (seeded alike on every rank), the step layout, the optimiser and scaler."""
    model, fmt, init_report = _build_model(cfg, ctx, task)
    layout = _Layout(cfg.train.batch_size, cfg.train.grad_accum, ctx.world_size)
    world = (ctx.rank, ctx.world_size) if ctx.distributed else None
    steps_per_epoch = len(task.train_loader(distributed=world, num_workers=0)) // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the training set ({len(task.train_set)} samples) is smaller than one optimiser step "
            f"(train.batch_size {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x "
            f"{ctx.world_size} processes)"
        )
    peak_lr = scaled_lr(cfg.optim, layout.clips_per_step)
    total = _total_steps(cfg, steps_per_epoch)
    return _Run(
        cfg=cfg,
        ctx=ctx,
        task=task,
        model=model,
        optimizer=build_optimizer(model, cfg.optim, peak_lr),
        scaler=torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None,
        fmt=fmt,
        layout=layout,
        steps_per_epoch=steps_per_epoch,
        total=total,
        schedule_steps=total,
        peak_lr=peak_lr,
        init_report=init_report,
        manager=CheckpointManager(Path(cfg.output_dir) / "checkpoints", cfg.checkpoint.keep_last),
        bad_log=BadDataLog(getattr(task, "sample_noun", "video")),
    )


def _build_model(cfg: Config, ctx: DistContext, task: Task) -> tuple[nn.Module, torch.memory_format, str]:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, init_report = task.build_model()
    if cfg.train.sync_bn and ctx.device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg.train.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    return model, task.memory_format(model, ctx.device), init_report


def _resume(run: _Run, resume: str | Path | bool | None, extend: bool) -> None:
    """Restore the checkpoint ``resume`` names (if any) and every RNG, set aside the folder's
    checkpoints that are not this run's past, wrap the model for DDP and open the run folder.
    ``extend``: the run may be longer than the checkpoint's (:func:`_resume_schedule`)."""
    cfg, ctx, manager = run.cfg, run.ctx, run.manager
    path = manager.latest() if resume is True else (Path(resume) if resume else None)
    if resume is True and path is None:
        raise MissingFileError(f"--resume: no checkpoint in {manager.folder}")
    state, own_rng = {}, False
    if path is not None:
        state = load_checkpoint(path)
        run.step, own_rng = _resume_position(
            state,
            path,
            cfg,
            run.layout,
            run.steps_per_epoch,
            len(run.task.train_set),
            run.model,
            extend=extend,
        )
        run.schedule_steps = _resume_schedule(state, path, cfg, run.total, run.steps_per_epoch, run.peak_lr)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scaler is not None and state["scaler"]:
            run.scaler.load_state_dict(state["scaler"])
        run.best = state["best_metric"]
        run.bad_log.merge(state["bad_data"]["bad"])
        # an extended run is not finished at the old end: precise BN runs again at the new one
        run.finished = bool(state.get("finished", False)) and run.step >= run.total
        run.pending = path if state.get("pending_validation", False) and not run.finished else None
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank + run.step)  # dropout masks differ per rank
    if own_rng:
        restore_rng_state(state["rng_per_rank"][ctx.rank])
    elif path is not None and "progress" not in state and not ctx.distributed:
        restore_rng_state(state["rng"])  # format v1, one process: exact as before
    # the folder's checkpoints and log are this run's past only when it resumes from one of them
    own_past = path is not None and path.resolve().parent == manager.folder.resolve()
    if ctx.is_main:
        _set_aside_other_checkpoints(manager, run.step if own_past else None)
    ctx.barrier()
    _open_run_folder(run, path, own_past)


def _open_run_folder(run: _Run, resumed_from: Path | None, own_past: bool) -> None:
    cfg, ctx, out = run.cfg, run.ctx, Path(run.cfg.output_dir)
    run.net = run.model
    if ctx.distributed:
        device = ctx.device
        run.net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    run.runlog = RunLog(out, enabled=ctx.is_main, truncate_after=run.step if own_past else None)
    run.seen = run.step * run.layout.clips_per_step
    run.bad_synced = run.bad_log.count
    run.window = _empty_window(run.task)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        run.task.write_run_files(out)
        log.info("model %s: %s", run.task.label, run.init_report)
        if resumed_from is not None:
            log.info("resumed from %s at step %d", resumed_from, run.step)


def _progress_bar(run: _Run, options: dict[str, Any]) -> tqdm:
    show = run.cfg.train.progress and run.ctx.is_main
    return tqdm(
        total=run.total, initial=run.step, **options, unit="step", dynamic_ncols=True, disable=not show
    )


def _train_loader(run: _Run, epoch: int, start_batch: int, num_workers: int) -> Any:
    world = (run.ctx.rank, run.ctx.world_size) if run.ctx.distributed else None
    return run.task.train_loader(
        distributed=world, num_workers=num_workers, epoch=epoch, start_batch=start_batch
    )


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's sampler the epoch: its batch sampler's when that one keeps the order
    (aspect-ratio grouping), else its sampler's."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    (batch_sampler if hasattr(batch_sampler, "set_epoch") else loader.sampler).set_epoch(epoch)


def _start_epoch(run: _Run, loader: Any, epoch: int) -> Iterator:
    _set_epoch(loader, epoch)
    run.net.train()
    with torch.random.fork_rng(devices=[]):  # worker seeding must not consume our RNG
        return iter(loader)


def _optimisation_step(run: _Run, batches: Iterator) -> float:
    """One optimiser step over ``train.grad_accum`` micro-batches (gradients all-reduced on the
    last one), with the bad-data accounting; returns the step's learning rate."""
    cfg, ctx, layout = run.cfg, run.ctx, run.layout
    lr = lr_at(run.step, run.schedule_steps, run.peak_lr, cfg.optim)
    set_lr(run.optimizer, lr)
    for micro in range(cfg.train.grad_accum):
        batch = next(batches)
        last = micro == cfg.train.grad_accum - 1
        sync = contextlib.nullcontext() if last or not ctx.distributed else run.net.no_sync()
        with sync, ctx.guard("the gradient all-reduce"), _explain_out_of_memory(layout):
            loss, sums, count = _forward_backward(run, batch)
        run.bad_log.add(batch.bad)
        run.window["loss"] += loss
        for key, value in sums.items():
            run.window["sums"][key] += value
        run.window["count"] += count
    with _explain_out_of_memory(layout):
        _optimizer_step(run.optimizer, run.scaler)
    run.step += 1
    run.seen += layout.clips_per_step
    _sync_bad_data(run)
    run.bad_log.check(seen=max(len(run.task.train_set), run.seen), threshold=cfg.data.bad_data_threshold)
    return lr


def _after_step(run: _Run, bar: tqdm, epoch: int, lr: float) -> None:
    """What follows a step when due: a log record, the end of an epoch's validation, a checkpoint."""
    cfg, step, total = run.cfg, run.step, run.total
    bar.update(1)
    if step % cfg.train.log_every == 0 or step == total:
        record = _window_record(run, epoch, lr)
        run.runlog.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", clips_s=f"{record['clips_per_s']:.1f}")
    epoch_end = step % run.steps_per_epoch == 0
    every_eval = cfg.eval.every_epochs
    finished_epoch = step // run.steps_per_epoch
    validate = (
        epoch_end
        and run.task.has_validation
        and bool(every_eval)
        and finished_epoch % every_eval == 0
        and step != total
    )
    every = cfg.checkpoint.every_iters
    if ((step % every == 0 if every else epoch_end) or validate) and step != total:
        _checkpoint_around_validation(run, validate)


def _checkpoint_around_validation(run: _Run, validate: bool) -> None:
    """Write the step's checkpoint; with ``validate``, first marked as awaiting its validation
    (a resume from it validates before it trains on), then validate and write it again with the
    validation's outcome (``best_metric``). A validation that fails costs no training: the
    error names the checkpoint to resume from."""
    state = _checkpoint_state(run) | {"pending_validation": validate}
    path = run.manager.folder / f"iter_{run.step:08d}.pt"
    if run.ctx.is_main:
        path = run.manager.save(state, run.step)
    run.ctx.barrier()
    if validate:
        _validate_or_explain(run, path)
        if run.ctx.is_main:
            run.manager.save(state | {"pending_validation": False, "best_metric": run.best}, run.step)
        run.ctx.barrier()


def _pending_validation(run: _Run, checkpoint: Path) -> None:
    """The validation the run was resumed before (it failed, or the run was stopped during it),
    then ``checkpoint`` written again with its outcome, as the uninterrupted run wrote it."""
    if not run.task.has_validation:
        log.warning("%s awaits a validation, but this run has no validation data: skipped", checkpoint)
        return
    log.info("validating step %d first: %s awaits its validation", run.step, checkpoint)
    _validate_or_explain(run, checkpoint)
    if run.ctx.is_main:
        state = load_checkpoint(checkpoint)
        state |= {"pending_validation": False, "best_metric": run.best, "config": config_to_dict(run.cfg)}
        state["schedule"] = _schedule_record(run)  # with the config: an extended run's
        run.manager.save(state, run.step)
    run.ctx.barrier()


def _validate_or_explain(run: _Run, checkpoint: Path) -> Evaluation:
    """:func:`_validate`; an error in it is re-raised as :class:`ValidationError` naming the
    validation data and the checkpoint that holds the step (written before it)."""
    try:
        return _validate(run)
    except Exception as err:
        log.error("validation after step %d failed", run.step, exc_info=err)
        data = ", ".join(run.task.validation_files) or "the validation data"
        raise ValidationError(
            f"validation after step {run.step} failed ({type(err).__name__}: {err}); data: {data}. "
            f"The step's checkpoint {checkpoint} was written first: fix the data or the setting "
            "and run again with --resume, which validates, then continues"
        ) from err


def _finish(run: _Run, loader: Any, started: float) -> TrainResult:
    """Precise BN, the final validation, the last checkpoint, the weights and the summary."""
    cfg, ctx, out = run.cfg, run.ctx, Path(run.cfg.output_dir)
    if cfg.train.precise_bn_batches and not run.finished:
        _precise_bn(run, loader)
    final, val_bad = None, []
    validate = run.task.has_validation
    state = _checkpoint_state(run) | {"finished": True, "pending_validation": validate}
    path = run.manager.folder / f"iter_{run.step:08d}.pt"
    if ctx.is_main:
        path = run.manager.save(state, run.step)
    ctx.barrier()
    if validate:
        val_bad = _validate_or_explain(run, path).bad
        final = run.runlog.last_val
        if ctx.is_main:
            run.manager.save(state | {"pending_validation": False, "best_metric": run.best}, run.step)
    if ctx.is_main:
        save_weights(run.model, out / "model.safetensors", metadata={"model": run.task.label})
        summary = {
            "steps": run.step,
            "seconds": time.perf_counter() - started,
            "final_eval": final,
            "bad_data": run.bad_log.summary(),
            "val_bad_data": {"count": len(set(val_bad)), "paths": sorted(set(val_bad))},
            "init": run.init_report,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        run.runlog.plot(title=run.task.label)
    ctx.barrier()
    run.runlog.close()
    return TrainResult(out, run.step, final, run.bad_log.summary(), time.perf_counter() - started)


def _precise_bn(run: _Run, loader: Any) -> None:
    _set_epoch(loader, run.total // run.steps_per_epoch + 1)  # fresh clips, same workers
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    n = update_bn_stats(
        run.model,
        batches,
        run.cfg.train.precise_bn_batches,
        run.device,
        run.fmt,
        run.ctx,
        model_input=lambda batch: run.task.model_input(batch, run.device, run.fmt),
    )
    log.info("precise BN: statistics re-estimated over %d batches", n)


def _validate(run: _Run) -> Evaluation:
    """The task's evaluation, logged; a better metric replaces ``best.pt`` (a collective). It
    leaves the RNG states as they were: a run resumed after it continues as the one that ran it."""
    device = run.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        evaluation = run.task.evaluate(run.model, run.ctx, memory_format=run.fmt)
    run.runlog.write({"kind": "val", "step": run.step, **evaluation.record})
    metric = evaluation.metric  # gathered: the same on every rank
    if run.best is None or metric > run.best:
        run.best = metric
        if run.cfg.checkpoint.keep_best:
            state = _checkpoint_state(run)  # a collective
            if run.ctx.is_main:
                run.manager.save_best(state | {"best_metric": run.best})
    if math.isnan(metric):
        log.warning("validation metric is NaN")
    return evaluation


def _checkpoint_state(run: _Run) -> dict[str, Any]:
    """The checkpoint now; a collective (every rank's RNG state): call it on every rank.
    ``progress`` is the position as epoch + clips taken in that epoch, with the step layout that
    produced it, so a resume can check (and map) it. ``rng_per_rank``: every process's RNG
    states, in rank order (``rng``: rank 0's, as format v1 had)."""
    rng = run.ctx.gather_objects(capture_rng_state())
    epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
    layout = run.layout
    return {
        "format": "nonlocalnet-train-v2",
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "rng": rng[0],
        "rng_per_rank": rng,
        "step": run.step,
        "schedule": _schedule_record(run),
        "progress": {
            "epoch": epoch,
            "samples": in_epoch * layout.clips_per_step,
            "batch_size": layout.batch_size,
            "grad_accum": layout.grad_accum,
            "processes": layout.processes,
        },
        "config": config_to_dict(run.cfg),
        **run.task.checkpoint_extras(),
        "bad_data": run.bad_log.summary(),
        "best_metric": run.best,
    }


def _schedule_record(run: _Run) -> dict[str, int]:
    """The run's length and the length its lr milestones are fractions of (they differ once a
    resume extended the run): what :func:`_resume_schedule` reads back."""
    return {"steps": run.total, "lr_schedule_steps": run.schedule_steps}


def _set_aside_other_checkpoints(manager: CheckpointManager, resumed_at: int | None) -> None:
    """Before a run writes its first checkpoint: move out of the way the checkpoints in its
    folder that are not its past. A run resumed from a checkpoint of this folder at step S
    (``resumed_at``) sets aside those after S (the future it discards); a new run, or one
    resumed from elsewhere (``None``), all of them (a used folder)."""
    target, moved = manager.set_aside(resumed_at)
    if moved:
        what = "of a discarded future" if resumed_at is not None else "of another run"
        log.warning(
            "moved %d checkpoints %s (%s) to %s",
            len(moved),
            what,
            ", ".join(p.name for p in moved),
            target,
        )


def _forward_backward(run: _Run, batch: Any) -> tuple[float, dict[str, float], int]:
    """One micro-batch: its summed loss over the nominal batch, scaled for accumulation; returns
    the loss sum, the task's summed statistics and the samples used. A batch of only broken
    samples adds a zero gradient; under DDP it still runs the wrapped model (on a placeholder
    input) so that this rank joins the gradient all-reduce like the others."""
    cfg, device = run.cfg, run.device
    scale = 1.0 / (cfg.train.batch_size * cfg.train.grad_accum)
    if len(batch) == 0:
        if isinstance(run.net, nn.parallel.DistributedDataParallel):
            net, task, fmt = run.net, run.task, run.fmt
            _placeholder_backward(net, lambda: task.placeholder_loss(net, device, fmt), cfg.train.amp, device)
        else:
            loss = sum(p.sum() * 0.0 for p in run.net.parameters())
            loss.backward()
        return 0.0, {}, 0
    with autocast_context(cfg.train.amp, device):
        out = run.task.loss(run.net, batch, device, run.fmt)
    scaled = out.loss * scale
    (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    return out.loss.item(), out.sums, len(batch)


def _placeholder_backward(
    net: nn.parallel.DistributedDataParallel, loss: Callable[[], Tensor], amp: str, device: torch.device
) -> None:
    """A zero-gradient backward through DDP: ``loss()`` (a forward of ``net`` on a stand-in
    sample, the task's ``placeholder_loss``) times zero; no RNG drawn, buffers such as BatchNorm
    statistics restored afterwards."""
    module = net.module
    saved = [b.detach().clone() for b in module.buffers()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), autocast_context(amp, device):
        out = loss()
    (out.float().sum() * 0.0).backward()
    with torch.no_grad():  # after the backward, which may need the buffers as they were
        for buffer, value in zip(module.buffers(), saved, strict=True):
            buffer.copy_(value)


@contextlib.contextmanager
def _explain_out_of_memory(layout: _Layout):
    """An out-of-memory error in a training step keeps its type and says how to fit."""
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        hint = (
            f"out of memory in a training step with train.batch_size {layout.batch_size} per process: "
            f"use a smaller train.batch_size and a larger train.grad_accum to keep the "
            f"{layout.clips_per_step} clips per optimiser step"
        )
        try:
            explained = type(err)(f"{err}\n{hint}")
        except Exception:  # an error type that cannot be built from a message
            err.add_note(hint)
            raise err from None
        raise explained from err


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync_bad_data(run: _Run) -> None:
    """After each step, give every rank the union of the ranks' broken-sample logs whenever some
    rank met a new one: the summary, checkpoints and the threshold check (the same on every
    rank) then count every rank's broken samples, each once. ``run.bad_synced``: the log's
    size after the last sync."""
    bad_log, ctx = run.bad_log, run.ctx
    if ctx.distributed:
        new = torch.tensor([float(bad_log.count - run.bad_synced)])
        ctx.all_reduce_sum(new)
        if new.item() > 0:
            for part in ctx.gather_objects(bad_log.summary()["bad"]):
                bad_log.merge(part)
    run.bad_synced = bad_log.count


def _empty_window(task: Task) -> dict[str, Any]:
    """Sums over the steps since the last log record (the task's statistics by name)."""
    return {
        "loss": 0.0,
        "sums": dict.fromkeys(task.train_metrics, 0.0),
        "count": 0,
        "time": time.perf_counter(),
    }


def _window_record(run: _Run, epoch: int, lr: float) -> dict[str, Any]:
    """The log record of the window, summed over ranks (a collective), and a new window."""
    window, names = run.window, list(run.task.train_metrics)
    totals = torch.tensor(
        [window["loss"], *(window["sums"][k] for k in names), float(window["count"])], dtype=torch.float64
    )
    run.ctx.all_reduce_sum(totals)
    now = time.perf_counter()
    count = max(totals[-1].item(), 1.0)
    record = {"kind": "train", "step": run.step, "epoch": epoch, "loss": totals[0].item() / count}
    record |= {k: totals[1 + i].item() / count for i, k in enumerate(names)}
    record |= {"lr": lr, "clips_per_s": totals[-1].item() / max(now - window["time"], 1e-9)}
    run.window = _empty_window(run.task) | {"time": now}
    return record
