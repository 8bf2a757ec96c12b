"""What the training loop does around its steps, as hooks (detectron2's manner): the metrics
log, the progress bar, precise BN, checkpoints and validation. A hook's methods take the
running :class:`~nonlocalnet.engine.trainer.Trainer`; its ``state`` (:class:`RunState`) is the
run. :func:`~nonlocalnet.engine.trainer.train` runs the built-in hooks in the order of
:func:`default_hooks`, then the user's."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from nonlocalnet.engine.checkpoint import load_checkpoint
from nonlocalnet.engine.config import config_to_dict
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.state import RunState, SavedCheckpoint
from nonlocalnet.engine.step import BatchStats
from nonlocalnet.engine.task import Evaluation
from nonlocalnet.errors import ValidationError

if TYPE_CHECKING:
    from pathlib import Path

    from nonlocalnet.engine.trainer import Trainer

__all__ = [
    "CheckpointHook",
    "HookBase",
    "LoggingHook",
    "MetricsWindow",
    "PreciseBNHook",
    "ProgressBar",
    "ProgressHook",
    "ValidationHook",
    "default_hooks",
]

log = logging.getLogger("nonlocalnet.train")


class HookBase:
    """A hook of the training loop; each method does nothing unless overridden.
    ``before_train``: after the resume, before the first step; ``before_step`` / ``after_step``:
    around each optimiser step (``trainer.state.step`` counts the steps done); ``after_train``:
    after the last step (also of a run resumed at its end)."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once before the first step."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each optimiser step."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after each optimiser step."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once after the last step."""


@dataclass(frozen=True)
class ProgressBar:
    """The progress bar's label (default ``train <task label>``) and line (``position``: for
    several runs side by side)."""

    desc: str | None = None
    position: int | None = None


@dataclass
class MetricsWindow:
    """Sums over the steps since the last log record: the loss, the task's statistics by name,
    the samples used, from ``started`` (``time.perf_counter``)."""

    names: tuple[str, ...]
    started: float
    loss: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def __post_init__(self) -> None:
        self.sums = dict.fromkeys(self.names, 0.0) | self.sums

    def add(self, stats: BatchStats) -> None:
        self.loss += stats.loss
        for key, value in stats.sums.items():
            self.sums[key] += value
        self.count += stats.count


def _validation_due(state: RunState) -> bool:
    """Whether the step just taken ends an epoch that ``eval.every_epochs`` validates (the
    last step's validation comes after precise BN, in ``after_train``)."""
    cfg, spe = state.cfg, state.schedule.steps_per_epoch
    every = cfg.eval.every_epochs
    return (
        state.step % spe == 0
        and state.task.has_validation
        and bool(every)
        and (state.step // spe) % every == 0
        and state.step != state.schedule.total
    )


class LoggingHook(HookBase):
    """A ``train`` record in the metrics log every ``train.log_every`` steps and at the last:
    the window's means over the ranks (a collective), the lr, samples per second and the
    scalars put with :meth:`Trainer.put_scalar` since the last record."""

    def __init__(self) -> None:
        self.window: MetricsWindow | None = None
        self.record: dict[str, Any] | None = None  # the record of the step just taken, if any

    def before_train(self, trainer: Trainer) -> None:
        self.window = MetricsWindow(tuple(trainer.state.task.train_metrics), time.perf_counter())

    def after_step(self, trainer: Trainer) -> None:
        state, window = trainer.state, self.window
        assert window is not None
        for stats in trainer.step_result.batches:
            window.add(stats)
        self.record = None
        if state.step % state.cfg.train.log_every == 0 or state.step == state.schedule.total:
            self.record = self._record(state, window) | trainer.take_scalars()
            state.runlog.write(self.record)

    def _record(self, state: RunState, window: MetricsWindow) -> dict[str, Any]:
        """The window's record, summed over ranks (a collective); a new window starts."""
        totals = torch.tensor(
            [window.loss, *(window.sums[k] for k in window.names), float(window.count)], dtype=torch.float64
        )
        state.ctx.all_reduce_sum(totals)
        now = time.perf_counter()
        count = max(totals[-1].item(), 1.0)
        record = {"kind": "train", "step": state.step, "epoch": state.epoch, "loss": totals[0].item() / count}
        record |= {k: totals[1 + i].item() / count for i, k in enumerate(window.names)}
        record |= {"lr": state.lr, "samples_per_s": totals[-1].item() / max(now - window.started, 1e-9)}
        self.window = MetricsWindow(window.names, now)
        return record


class ProgressHook(HookBase):
    """A tqdm bar over the run's steps (rank 0, when ``train.progress``) showing the logged
    loss, lr and samples per second (from ``logging``'s records)."""

    def __init__(self, options: ProgressBar, logging_hook: LoggingHook) -> None:
        self.options, self.logging = options, logging_hook
        self.bar: tqdm | None = None

    def before_train(self, trainer: Trainer) -> None:
        state = trainer.state
        self.bar = tqdm(
            total=state.schedule.total,
            initial=state.step,
            desc=self.options.desc or f"train {state.task.label}",
            position=self.options.position,
            unit="step",
            dynamic_ncols=True,
            disable=not (state.cfg.train.progress and state.ctx.is_main),
        )

    def after_step(self, trainer: Trainer) -> None:
        assert self.bar is not None
        self.bar.update(1)
        record = self.logging.record
        if record is not None:
            loss, lr, speed = record["loss"], record["lr"], record["samples_per_s"]
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class PreciseBNHook(HookBase):
    """After the last step, BatchNorm statistics re-estimated over ``train.precise_bn_batches``
    fresh training batches (the paper's recipe); not again for a run resumed at its end."""

    def after_train(self, trainer: Trainer) -> None:
        state = trainer.state
        if not state.cfg.train.precise_bn_batches or state.finished:
            return
        task, device, fmt = state.task, state.device, state.memory_format
        task.set_epoch(trainer.loader, state.schedule.total // state.schedule.steps_per_epoch + 1)
        with torch.random.fork_rng(devices=[]):  # fresh samples, same workers
            batches = iter(trainer.loader)
        n = update_bn_stats(
            state.model,
            batches,
            state.cfg.train.precise_bn_batches,
            model_input=lambda batch: task.model_input(batch, device, fmt),
            ctx=state.ctx,
        )
        log.info("precise BN: statistics re-estimated over %d batches", n)


def _save(state: RunState, contents: dict[str, Any]) -> None:
    """Write ``contents`` as the checkpoint of this step (rank 0) and remember it."""
    path = state.checkpoints.folder / f"iter_{state.step:08d}.pt"
    if state.ctx.is_main:
        path = state.checkpoints.save(contents, state.step)
    state.saved = SavedCheckpoint(path, contents)
    state.ctx.barrier()


class CheckpointHook(HookBase):
    """A checkpoint every ``checkpoint.every_iters`` steps (else at each epoch's end) and before
    each validation, marked ``pending_validation`` then (:class:`ValidationHook` writes it again
    with the outcome); after the last step, the final one (``finished``)."""

    def after_step(self, trainer: Trainer) -> None:
        state = trainer.state
        every, step = state.cfg.checkpoint.every_iters, state.step
        due = step % every == 0 if every else step % state.schedule.steps_per_epoch == 0
        validate = _validation_due(state)
        if (due or validate) and step != state.schedule.total:
            _save(state, state.checkpoint_contents() | {"pending_validation": validate})

    def after_train(self, trainer: Trainer) -> None:
        state = trainer.state
        finished = {"finished": True, "pending_validation": state.task.has_validation}
        _save(state, state.checkpoint_contents() | finished)


class ValidationHook(HookBase):
    """The task's evaluation at the end of every ``eval.every_epochs``-th epoch and after the
    last step, each after the step's checkpoint, which is then written again with the outcome
    (``pending_validation`` false, ``best_metric``); a better metric writes ``best.pt``. A run
    resumed from a checkpoint awaiting its validation runs it first. A failing validation is a
    :class:`ValidationError` naming the checkpoint to resume from: it costs no training."""

    def before_train(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.pending is None:
            return
        if not state.task.has_validation:
            log.warning("%s awaits a validation, but this run has no validation data: skipped", state.pending)
            return
        log.info("validating step %d first: %s awaits its validation", state.step, state.pending)
        _validate_or_explain(state, state.pending)
        if state.ctx.is_main:  # written again as the uninterrupted run wrote it
            contents = load_checkpoint(state.pending)
            contents |= {
                "pending_validation": False,
                "best_metric": state.best,
                "config": config_to_dict(state.cfg),
            }
            contents["schedule"] = state.schedule_record()  # with the config: an extended run's
            state.checkpoints.save(contents, state.step)
        state.ctx.barrier()

    def after_step(self, trainer: Trainer) -> None:
        if _validation_due(trainer.state):
            self._validate_saved(trainer.state)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.state.task.has_validation:
            self._validate_saved(trainer.state)

    @staticmethod
    def _validate_saved(state: RunState) -> None:
        saved = state.saved
        assert saved is not None and saved.contents["step"] == state.step
        _validate_or_explain(state, saved.path)
        if state.ctx.is_main:
            state.checkpoints.save(
                saved.contents | {"pending_validation": False, "best_metric": state.best}, state.step
            )
        state.ctx.barrier()


def _validate_or_explain(state: RunState, checkpoint: Path) -> Evaluation:
    """:func:`_validate`; an error in it is re-raised as :class:`ValidationError` naming the
    validation data and the checkpoint that holds the step (written before it)."""
    try:
        return _validate(state)
    except Exception as err:
        log.error("validation after step %d failed", state.step, exc_info=err)
        data = ", ".join(state.task.validation_files) or "the validation data"
        raise ValidationError(
            f"validation after step {state.step} failed ({type(err).__name__}: {err}); data: {data}. "
            f"The step's checkpoint {checkpoint} was written first: fix the data or the setting "
            "and run again with --resume, which validates, then continues"
        ) from err


def _validate(state: RunState) -> Evaluation:
    """The task's evaluation, logged; a better metric replaces ``best.pt`` (a collective). It
    leaves the RNG states as they were: a run resumed after it continues as the one that ran it."""
    device = state.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        evaluation = state.task.evaluate(state.model, state.ctx, memory_format=state.memory_format)
    state.runlog.write({"kind": "val", "step": state.step, **evaluation.record})
    state.last_evaluation = evaluation
    metric = evaluation.metric  # gathered: the same on every rank
    if state.best is None or metric > state.best:
        state.best = metric
        if state.cfg.checkpoint.keep_best:
            contents = state.checkpoint_contents()  # a collective
            if state.ctx.is_main:
                state.checkpoints.save_best(contents | {"best_metric": state.best})
    if math.isnan(metric):
        log.warning("validation metric is NaN")
    return evaluation


def default_hooks(progress: ProgressBar | None = None) -> list[HookBase]:
    """The built-in hooks, in the order the loop runs them: the metrics log, the progress bar,
    precise BN, checkpoints, validation."""
    logging_hook = LoggingHook()
    return [
        logging_hook,
        ProgressHook(progress or ProgressBar(), logging_hook),
        PreciseBNHook(),
        CheckpointHook(),
        ValidationHook(),
    ]
