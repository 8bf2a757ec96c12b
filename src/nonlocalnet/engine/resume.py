"""Where a resumed run continues: the checks that a checkpoint can be continued exactly under a
config, the position it continues at, and the length of its lr schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nonlocalnet.engine.checkpoint import RESUME_FREE_SETTINGS, changed_settings
from nonlocalnet.engine.config import Config, ConfigError, config_to_dict
from nonlocalnet.engine.optim import lr_at, milestone_steps

__all__ = ["CHECKPOINT_FORMAT", "EXTEND_SETTINGS", "StepSplit", "resume_position", "resume_schedule"]

log = logging.getLogger("nonlocalnet.train")

CHECKPOINT_FORMAT = "nonlocalnet-train-v2"
"""The ``format`` of a training checkpoint (the only one a resume reads)."""

# the run's length: the settings a resume with ``extend`` may change (the schedule grows)
EXTEND_SETTINGS = ("train.epochs", "train.iterations")


@dataclass(frozen=True)
class StepSplit:
    """How an optimiser step is made: samples per process per micro-batch, micro-batches per
    step, processes."""

    batch_size: int
    grad_accum: int
    processes: int

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.processes

    def steps_per_epoch(self, num_samples: int) -> int:
        """As the training loader gives them: the epoch's permutation cut to a multiple of the
        processes, full micro-batches per process, full steps."""
        per_process = (num_samples - num_samples % self.processes) // self.processes
        return per_process // self.batch_size // self.grad_accum


def _split_sensitive(model: nn.Module) -> list[str]:
    """What makes this model's training depend on how a step's samples are split over processes
    and micro-batches (not only on which samples a step holds)."""
    reasons = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        reasons.append("BatchNorm uses the statistics of each process's micro-batch")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        reasons.append("each process draws its own dropout masks")
    return reasons


def _saved_split(state: dict[str, Any], path: Path) -> tuple[StepSplit, dict[str, int]]:
    """The step split a checkpoint was written with and its position (epoch, samples taken in
    it); a file of another format is a :class:`ConfigError`."""
    progress = state.get("progress")
    if state.get("format") != CHECKPOINT_FORMAT or progress is None:
        raise ConfigError(
            f"cannot resume from {path}: its format is {state.get('format')!r}, not a training "
            f"checkpoint of this version ({CHECKPOINT_FORMAT!r}); start a new run from its weights "
            f"(model.init=checkpoint model.init_path={path})"
        )
    return StepSplit(progress["batch_size"], progress["grad_accum"], progress["processes"]), progress


def _split_problems(old: StepSplit, new: StepSplit, model: nn.Module) -> tuple[list[str], list[str], str]:
    """The split's changes, those that forbid an exact resume, and why."""
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
    if old.samples_per_step != new.samples_per_step:
        why = (
            f" The samples per optimiser step (train.batch_size x train.grad_accum x processes) "
            f"change from {old.samples_per_step} to {new.samples_per_step}, so the step count, "
            "learning rate and data order of the checkpoint no longer apply."
        )
        return changes, changes, why
    sensitive = _split_sensitive(model)
    if sensitive:
        why = (
            f" The {new.samples_per_step} samples per step are the same but split differently, and "
            f"{' and '.join(sensitive)}."
        )
        return changes, changes, why
    return changes, [], ""


def _refuse(path: Path, problems: list[str], why: str, *, longer: bool) -> None:
    """The error naming what forbids an exact resume (``longer``: the run's length changed)."""
    if longer:
        why += (
            " To train longer from this checkpoint, ask for it: train --extend (train(..., "
            "extend=True)) lets train.epochs / train.iterations grow; the lr milestones keep their steps."
        )
    raise ConfigError(
        f"cannot resume exactly from {path}: changed since the checkpoint: {', '.join(problems)}."
        f"{why} Resume with the checkpoint's settings, or start a new run from its weights "
        f"(model.init=checkpoint model.init_path={path})."
    )


def resume_position(
    state: dict[str, Any],
    path: Path,
    cfg: Config,
    split: StepSplit,
    spe: int,
    model: nn.Module,
    *,
    free_settings: tuple[str, ...],
    extend: bool,
) -> tuple[int, bool]:
    """Check that the checkpoint ``state`` at ``path`` can be continued exactly under ``cfg``
    and ``split`` (``spe`` steps per epoch); returns the step to continue at and whether each
    rank's saved RNG state applies.

    The continuation is exact when every setting that shapes the weights is the checkpoint's
    (logging, checkpointing, evaluation and loading settings may change:
    :data:`RESUME_FREE_SETTINGS` and the task's ``free_settings``; with ``extend``, the run's
    length too: :data:`EXTEND_SETTINGS`, checked by :func:`resume_schedule`). The step split
    (``train.batch_size``, ``train.grad_accum``, processes) may change only if the samples per
    step stay the same and the model is not split-sensitive (no BatchNorm, no dropout): each
    step then sees the same samples, and the run equals the uninterrupted one up to
    floating-point rounding. Otherwise a :class:`ConfigError` names each changed setting.
    """
    old, progress = _saved_split(state, path)
    free = (*RESUME_FREE_SETTINGS, *free_settings, "train.batch_size", "train.grad_accum")
    free += EXTEND_SETTINGS if extend else ()
    changed = changed_settings(
        state.get("config", {}), config_to_dict(cfg), free=free, defaults=config_to_dict(Config())
    )
    split_changes, refused, why = _split_problems(old, split, model)
    problems = [f"{key} {a!r} -> {b!r}" for key, a, b in changed] + refused
    if problems:
        _refuse(path, problems, why, longer=any(key in EXTEND_SETTINGS for key, _, _ in changed))
    in_epoch, epoch = progress["samples"] // split.samples_per_step, progress["epoch"]
    if in_epoch >= spe:  # the new split's epoch is shorter: this one is over
        epoch, in_epoch = epoch + 1, 0
    step = epoch * spe + in_epoch
    if split_changes:
        log.warning(
            "resuming with %s: the same %d samples per step, split differently; the result equals "
            "an uninterrupted run up to floating-point rounding",
            ", ".join(split_changes),
            split.samples_per_step,
        )
    if step != state["step"]:
        log.info("checkpoint step %d is step %d with %d steps per epoch", state["step"], step, spe)
    return step, old == split and len(state["rng_per_rank"]) == split.processes


def resume_schedule(state: dict[str, Any], path: Path, cfg: Config, total: int, peak_lr: float) -> int:
    """The length of the lr schedule (what :func:`lr_at` takes as ``total_steps``) for a run of
    ``total`` steps resumed from the checkpoint ``state`` at ``path`` (``peak_lr`` for the log).

    A run keeps the schedule it started with: the milestones are fractions of its first length,
    recorded in each checkpoint (``schedule``). Extended (:data:`EXTEND_SETTINGS` changed, which
    :func:`resume_position` allows only with ``extend``), the run is longer than the
    checkpoint's; the milestones then keep their steps, so every step up to the checkpoint had
    the lr it had, and the added steps continue at the lr of the checkpoint's last step (as
    PySlowFast's absolute ``SOLVER.STEPS`` do when ``MAX_EPOCH`` grows). A shorter run is refused."""
    old_total, schedule = state["schedule"]["steps"], state["schedule"]["lr_schedule_steps"]
    if total < old_total:
        raise ConfigError(
            f"cannot resume from {path} with a shorter run: train.epochs {cfg.train.epochs} / "
            f"train.iterations {cfg.train.iterations} give {total} steps, the checkpoint's run has "
            f"{old_total}. --extend only lengthens a run; to stop earlier, use the checkpoint of "
            "that step (model.init=checkpoint for a new run)"
        )
    if total > old_total:
        log.info(
            "extending the run from %d to %d steps: the lr milestones stay at steps %s (of the "
            "%d-step schedule); the steps after %d have lr %.4g",
            old_total,
            total,
            milestone_steps(cfg.optim, schedule),
            schedule,
            old_total,
            lr_at(old_total, schedule, peak_lr, cfg.optim),
        )
    return schedule
