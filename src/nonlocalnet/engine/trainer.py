"""The one training loop, for any task (:class:`~nonlocalnet.engine.task.Task`): the paper's
recipe, resumable at any checkpoint (bit-exact on CPU), distributed through torchrun, robust to
broken samples.

:func:`train` sets up a :class:`~nonlocalnet.engine.state.RunState` (the model, optimiser and
position, restored from a checkpoint when resuming), and :class:`Trainer` runs it: the hooks'
``before_train``, then per step the optimisation step between the hooks' ``before_step`` and
``after_step``, then their ``after_train``; the metrics log, the progress bar, precise BN,
checkpoints and validation are hooks (:mod:`nonlocalnet.engine.hooks`). The task supplies the
model, data, loss and evaluation; the engine knows it only through ``cfg.task``
(:data:`~nonlocalnet.engine.task.TASKS`) or the ``task`` given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.config import Config, ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext, init_distributed
from nonlocalnet.engine.hooks import HookBase, ProgressBar, default_hooks
from nonlocalnet.engine.start import start_run
from nonlocalnet.engine.state import RunState
from nonlocalnet.engine.step import StepResult, optimisation_step
from nonlocalnet.engine.task import Task, build_task
from nonlocalnet.models import save_weights

__all__ = ["TrainResult", "Trainer", "train"]

log = logging.getLogger("nonlocalnet.train")


@dataclass
class TrainResult:
    """What a finished run produced (paths under ``output_dir``) and its final numbers."""

    output_dir: Path
    steps: int
    final_eval: dict[str, Any] | None
    bad_data: dict[str, Any]
    seconds: float


class Trainer:
    """Runs ``state`` to its last step with ``hooks`` (in order). Hooks read ``state``,
    ``loader`` (the training loader), ``step_result`` (the last step's lr and statistics) and
    may add scalars to the next metrics record (:meth:`put_scalar`)."""

    def __init__(self, state: RunState, hooks: Sequence[HookBase]) -> None:
        self.state, self.hooks = state, list(hooks)
        self.step_result = StepResult(state.lr)
        self._scalars: dict[str, float] = {}
        ctx, spe = state.ctx, state.schedule.steps_per_epoch
        epoch, in_epoch = divmod(state.step, spe)
        self.loader: DataLoader = state.task.train_loader(
            distributed=(ctx.rank, ctx.world_size) if ctx.distributed else None,
            num_workers=state.cfg.data.num_workers,
            epoch=epoch,
            start_batch=in_epoch * state.cfg.train.grad_accum,
        )

    def put_scalar(self, name: str, value: float) -> None:
        """Add ``name: value`` to the next ``train`` record of the metrics log (the last value
        put wins)."""
        self._scalars[name] = float(value)

    def take_scalars(self) -> dict[str, float]:
        """The scalars put since the last record (then forgotten)."""
        scalars, self._scalars = self._scalars, {}
        return scalars

    def run(self) -> None:
        """The hooks' ``before_train``, the steps up to ``schedule.total``, ``after_train``."""
        state, spe = self.state, self.state.schedule.steps_per_epoch
        self._call("before_train")
        while state.step < state.schedule.total:
            state.epoch, in_epoch = divmod(state.step, spe)
            batches = self._start_epoch(state.epoch)
            for _ in range(in_epoch, spe):
                self._call("before_step")
                self.step_result = optimisation_step(state, batches)
                self._call("after_step")
                if state.step >= state.schedule.total:
                    break
        self._call("after_train")

    def _call(self, method: str) -> None:
        for hook in self.hooks:
            getattr(hook, method)(self)

    def _start_epoch(self, epoch: int) -> Iterator[Any]:
        self.state.task.set_epoch(self.loader, epoch)
        self.state.net.train()
        with torch.random.fork_rng(devices=[]):  # worker seeding must not consume our RNG
            return iter(self.loader)


def train(
    cfg: Config,
    *,
    resume: str | Path | bool | None = None,
    extend: bool = False,
    task: Task | None = None,
    ctx: DistContext | None = None,
    progress: ProgressBar | None = None,
    hooks: Sequence[HookBase] = (),
) -> TrainResult:
    """Train the task ``cfg.task`` names (or ``task``) and write everything under
    ``cfg.output_dir``.

    ``resume``: ``True`` continues from the newest checkpoint in the output folder, a path from
    that checkpoint. Model, optimiser, scaler, every process's RNG states and the position
    (epoch + samples taken in it) are restored, so the run continues exactly where the
    checkpoint was taken. Settings that shape the weights must be the checkpoint's; only the
    split of a step's samples over ``train.batch_size``/``train.grad_accum``/processes may
    change, and only for models without BatchNorm or dropout (then equal up to rounding);
    anything else is a :class:`ConfigError` naming the changed settings (e.g.
    ``train.batch_size 2 -> 4``). ``extend``: the resumed run may also be longer
    (``train.epochs``/``train.iterations`` grown): the steps up to the checkpoint stay as they
    were, the lr milestones keep their steps and the added steps continue at the checkpoint's
    last lr (docs/training.md). Checkpoints in the folder that are not this run's past (a new
    run in a used folder: all; a resume at step S: those after S) are moved to
    ``checkpoints/superseded-<time>/`` first, so neither rotation nor ``resume=True`` confuses
    them with this run's. ``task``: the :class:`~nonlocalnet.engine.task.Task` object to train
    (default: ``build_task(cfg)``). ``ctx``: the processes (default: from torchrun's
    environment). ``progress``: the progress bar's label and line (shown when
    ``train.progress``). ``hooks``: run after the built-in ones (:class:`HookBase`).
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
    task = task if task is not None else build_task(cfg)
    state = start_run(cfg, ctx, task, resume, extend=extend)
    Trainer(state, [*default_hooks(progress), *hooks]).run()
    result = _finish(state, started)
    if own_ctx:
        ctx.shutdown()
    return result


def _finish(state: RunState, started: float) -> TrainResult:
    """The weights, the summary and the figure of a finished run."""
    ctx, out, task = state.ctx, Path(state.cfg.output_dir), state.task
    evaluation = state.last_evaluation if task.has_validation else None
    final = state.runlog.last_val if evaluation is not None else None
    val_bad = sorted(set(evaluation.bad)) if evaluation is not None else []
    if ctx.is_main:
        save_weights(state.model, out / "model.safetensors", metadata={"model": task.label})
        summary = {
            "steps": state.step,
            "seconds": time.perf_counter() - started,
            "final_eval": final,
            "bad_data": state.bad_data.summary(),
            "val_bad_data": {"count": len(val_bad), "paths": val_bad},
            "init": state.init_report,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        state.runlog.plot(title=task.label)
    ctx.barrier()
    state.runlog.close()
    return TrainResult(out, state.step, final, state.bad_data.summary(), time.perf_counter() - started)
