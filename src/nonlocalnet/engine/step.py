"""One optimisation step: ``train.grad_accum`` micro-batches forward and backward (a
placeholder backward for a micro-batch of only broken samples under DDP), the optimiser step,
the bad-data accounting, and an out-of-memory error that says how to fit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.distributed import is_out_of_memory
from nonlocalnet.engine.optim import lr_at, set_lr
from nonlocalnet.engine.resume import StepSplit
from nonlocalnet.engine.state import RunState

__all__ = ["BatchStats", "StepResult", "forward_backward", "optimisation_step", "placeholder_backward"]


@dataclass(frozen=True)
class BatchStats:
    """One micro-batch's summed loss, the task's summed statistics and the samples used."""

    loss: float
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0


@dataclass(frozen=True)
class StepResult:
    """An optimiser step: its learning rate and its micro-batches' statistics, in order."""

    lr: float
    batches: tuple[BatchStats, ...] = ()


def optimisation_step(state: RunState, batches: Iterator[Any]) -> StepResult:
    """One optimiser step over ``train.grad_accum`` micro-batches (gradients all-reduced on the
    last one), with the bad-data accounting; advances ``state.step``."""
    cfg, ctx, split = state.cfg, state.ctx, state.split
    schedule = state.schedule
    state.lr = lr_at(state.step, schedule.lr_steps, schedule.peak_lr, cfg.optim)
    set_lr(state.optimizer, state.lr)
    stats = []
    for micro in range(cfg.train.grad_accum):
        batch = next(batches)
        sync = _gradient_sync(state.net, last=micro == cfg.train.grad_accum - 1)
        with sync, ctx.guard("the gradient all-reduce"), explain_out_of_memory(split):
            stats.append(forward_backward(state, batch))
        state.bad_data.add(batch.bad)
    with explain_out_of_memory(split):
        _optimizer_step(state.optimizer, state.scaler)
    state.step += 1
    _sync_bad_data(state)
    seen = max(len(state.task.train_set), state.samples_seen)
    state.bad_data.check(seen=seen, threshold=cfg.data.bad_data_threshold)
    return StepResult(state.lr, tuple(stats))


def _gradient_sync(net: nn.Module, *, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP (a distributed run's ``net``) all-reduces the gradients on a step's last micro-batch
    only."""
    if isinstance(net, nn.parallel.DistributedDataParallel) and not last:
        return net.no_sync()
    return contextlib.nullcontext()


def forward_backward(state: RunState, batch: Any) -> BatchStats:
    """One micro-batch: its summed loss over the nominal batch, scaled for accumulation. A batch
    of only broken samples adds a zero gradient; under DDP it still runs the wrapped model (on a
    placeholder input) so that this rank joins the gradient all-reduce like the others."""
    cfg, device, net, task, fmt = state.cfg, state.device, state.net, state.task, state.memory_format
    scale = 1.0 / (cfg.train.batch_size * cfg.train.grad_accum)
    if len(batch) == 0:
        if isinstance(net, nn.parallel.DistributedDataParallel):
            placeholder_backward(net, lambda: task.placeholder_loss(net, device, fmt), cfg.train.amp, device)
        else:
            zero = sum(p.sum() * 0.0 for p in net.parameters())
            assert isinstance(zero, Tensor)
            zero.backward()
        return BatchStats(0.0)
    with autocast_context(cfg.train.amp, device):
        out = task.loss(net, batch, device, fmt)
    scaled = out.loss * scale
    (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
    return BatchStats(out.loss.item(), out.sums, len(batch))


def placeholder_backward(
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
def explain_out_of_memory(split: StepSplit) -> Iterator[None]:
    """An out-of-memory error in a training step keeps its type and says how to fit."""
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        hint = (
            f"out of memory in a training step with train.batch_size {split.batch_size} per process: "
            f"use a smaller train.batch_size and a larger train.grad_accum to keep the "
            f"{split.samples_per_step} samples per optimiser step"
        )
        try:
            explained = type(err)(f"{err}\n{hint}")
        except Exception:  # an error type that cannot be built from a message
            add_note = getattr(err, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(hint)
            raise err from None
        raise explained from err


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync_bad_data(state: RunState) -> None:
    """After each step, give every rank the union of the ranks' broken-sample logs whenever some
    rank met a new one: the summary, checkpoints and the threshold check (the same on every
    rank) then count every rank's broken samples, each once."""
    bad_log, ctx = state.bad_data, state.ctx
    if ctx.distributed:
        new = torch.tensor([float(bad_log.count - state.bad_synced)])
        ctx.all_reduce_sum(new)
        if new.item() > 0:
            for part in ctx.gather_objects(bad_log.summary()["bad"]):
                bad_log.merge(part)
    state.bad_synced = bad_log.count
