"""The training loop: the paper's recipe, resumable at any checkpoint (bit-exact on CPU),
distributed through torchrun, robust to broken videos."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nonlocalnet.data import BadDataLog, ClipBatch, FrameCache, build_loader
from nonlocalnet.engine.amp import autocast_context
from nonlocalnet.engine.checkpoint import (
    RESUME_FREE_SETTINGS,
    CheckpointManager,
    capture_rng_state,
    changed_settings,
    load_checkpoint,
    restore_rng_state,
)
from nonlocalnet.engine.config import Config, ConfigError, config_to_dict, save_config
from nonlocalnet.engine.distributed import DistContext, init_distributed, is_out_of_memory
from nonlocalnet.engine.evaluate import evaluate, views_per_video
from nonlocalnet.engine.layout import choose_memory_format
from nonlocalnet.engine.optim import build_optimizer, lr_at, scaled_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.runlog import RunLog
from nonlocalnet.engine.setup import build_dataset, build_model_from_config, initialise_model, load_samples
from nonlocalnet.models import save_weights

__all__ = ["TrainResult", "train"]

log = logging.getLogger("nonlocalnet.train")


@dataclass
class TrainResult:
    """What a finished run produced (paths under ``output_dir``) and its final numbers."""

    output_dir: Path
    steps: int
    final_eval: dict[str, Any] | None
    bad_data: dict[str, Any]
    seconds: float


def _memory_format(model: nn.Module, cfg: Config, device: torch.device) -> torch.memory_format:
    choice = cfg.train.memory_format
    if choice == "contiguous":
        return torch.contiguous_format
    if choice == "channels_last":
        model.to(memory_format=torch.channels_last_3d)
        return torch.channels_last_3d
    size = cfg.data.crop
    example = torch.randn(1, 3, cfg.data.clip_length, size, size, device=device)
    return choose_memory_format(model, example)


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


def _state(
    model, optimizer, scaler, step, cfg, class_names, bad_log, best, rng, layout, spe
) -> dict[str, Any]:
    """A checkpoint. ``progress`` is the position as epoch + clips taken in that epoch, with
    the step layout that produced it, so a resume can check (and map) it. ``rng_per_rank``:
    every process's RNG states, in rank order (``rng``: rank 0's, as format v1 had)."""
    epoch, in_epoch = divmod(step, spe)
    return {
        "format": "nonlocalnet-train-v2",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng[0],
        "rng_per_rank": rng,
        "step": step,
        "progress": {
            "epoch": epoch,
            "samples": in_epoch * layout.clips_per_step,
            "batch_size": layout.batch_size,
            "grad_accum": layout.grad_accum,
            "processes": layout.processes,
        },
        "config": config_to_dict(cfg),
        "class_names": list(class_names),
        "bad_data": bad_log.summary(),
        "best_metric": best,
    }


def _split_sensitive(model: nn.Module) -> list[str]:
    """What makes this model's training depend on how a step's clips are split over processes
    and micro-batches (not only on which clips a step holds)."""
    reasons = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        reasons.append("BatchNorm uses the statistics of each process's micro-batch")
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        reasons.append("each process draws its own dropout masks")
    return reasons


def _resume_position(
    state: dict[str, Any],
    path: Path,
    cfg: Config,
    layout: _Layout,
    spe: int,
    num_videos: int,
    model: nn.Module,
) -> tuple[int, bool]:
    """Check that the checkpoint at ``path`` can be continued exactly under ``cfg`` and
    ``layout`` (``spe`` steps per epoch over ``num_videos`` videos); returns the step to continue
    at and whether each rank's saved RNG state applies.

    The continuation is exact when every setting that shapes the weights is the checkpoint's
    (logging, checkpointing, evaluation and loading settings may change:
    :data:`RESUME_FREE_SETTINGS`). The step layout (``train.batch_size``, ``train.grad_accum``,
    processes) may change only if the clips per step stay the same and the model is not
    split-sensitive (no BatchNorm, no dropout): each step then sees the same clips, and the run
    equals the uninterrupted one up to floating-point rounding. Otherwise a :class:`ConfigError`
    names each changed setting.
    """
    saved_cfg = state.get("config", {})
    progress = state.get("progress")
    if progress is None:  # format v1: no layout recorded; its processes are unknown
        train_saved = saved_cfg.get("train", {})
        old = _Layout(
            train_saved.get("batch_size", layout.batch_size),
            train_saved.get("grad_accum", layout.grad_accum),
            layout.processes,
        )
        log.warning(
            "%s predates recording the number of processes; assuming it was written by %d",
            path,
            layout.processes,
        )
        epoch, in_epoch = divmod(state["step"], max(old.steps_per_epoch(num_videos), 1))
        progress = {"epoch": epoch, "samples": in_epoch * old.clips_per_step}
    else:
        old = _Layout(progress["batch_size"], progress["grad_accum"], progress["processes"])
    free = (*RESUME_FREE_SETTINGS, "train.batch_size", "train.grad_accum")
    changed = changed_settings(saved_cfg, config_to_dict(cfg), free=free)
    problems = [f"{key} {a!r} -> {b!r}" for key, a, b in changed]
    layout_changes = [
        f"{name} {a} -> {b}"
        for name, a, b in (
            ("train.batch_size", old.batch_size, layout.batch_size),
            ("train.grad_accum", old.grad_accum, layout.grad_accum),
            ("processes", old.processes, layout.processes),
        )
        if a != b
    ]
    why = ""
    if layout_changes:
        sensitive = _split_sensitive(model)
        if old.clips_per_step != layout.clips_per_step:
            problems += layout_changes
            why = (
                f" The clips per optimiser step (train.batch_size x train.grad_accum x processes) "
                f"change from {old.clips_per_step} to {layout.clips_per_step}, so the step count, "
                "learning rate and data order of the checkpoint no longer apply."
            )
        elif sensitive:
            problems += layout_changes
            why = (
                f" The {layout.clips_per_step} clips per step are the same but split differently, and "
                f"{' and '.join(sensitive)}."
            )
    if problems:
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


def train(
    cfg: Config,
    *,
    resume: str | Path | bool | None = None,
    ctx: DistContext | None = None,
    frame_cache: FrameCache | None = None,
    progress_desc: str | None = None,
    progress_position: int | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write everything under ``cfg.output_dir``.

    ``resume``: ``True`` continues from the newest checkpoint in the output folder, a path from
    that checkpoint. Model, optimiser, scaler, every process's RNG states and the position
    (epoch + clips taken in it) are restored, so the run continues exactly where the checkpoint
    was taken. Settings that shape the weights must be the checkpoint's; only the split of a
    step's clips over ``train.batch_size``/``train.grad_accum``/processes may change, and only
    for models without BatchNorm or dropout (then equal up to rounding); anything else is a
    :class:`ConfigError` naming the changed settings (e.g. ``train.batch_size 2 -> 4``).
    Checkpoints in the folder that are not this run's past (a new run in a used folder: all; a
    resume at step S: those after S) are moved to ``checkpoints/superseded-<time>/`` first, so
    neither rotation nor ``resume=True`` confuses them with this run's. ``frame_cache``: a
    decoded-video cache shared with other runs in this process (else ``data.cache_frames``).
    ``progress_desc``/``progress_position``: the progress bar's label and line, for several
    runs side by side.
    """
    started = time.perf_counter()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device, cfg.train.dist_timeout_s)
    # on an error, no shutdown: destroying the group would wait for a dead peer
    bar = {"desc": progress_desc or f"train {cfg.model.name}", "position": progress_position}
    result = _train(cfg, ctx, resume, started, frame_cache, bar)
    if own_ctx:
        ctx.shutdown()
    return result


def _train(
    cfg: Config,
    ctx: DistContext,
    resume: str | Path | bool | None,
    started: float,
    cache: FrameCache | None,
    bar_options: dict[str, Any],
) -> TrainResult:
    out = Path(cfg.output_dir)
    device = ctx.device
    autocast_context(cfg.train.amp, device)  # fp16 without CUDA: an error before any work
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    train_samples, class_names = load_samples(cfg.data, "train")
    val_samples = load_samples(cfg.data, "val")[0] if (cfg.data.val_list or cfg.data.val_folder) else []
    if cfg.model.num_classes != len(class_names):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the data has {len(class_names)} classes"
        )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model_from_config(cfg.model)
    init_report = initialise_model(model, cfg.model)
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg.train.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    fmt = _memory_format(model, cfg, device)

    if cache is None and cfg.data.cache_frames:
        cache = FrameCache()
    train_set = build_dataset(cfg.data, train_samples, train=True, seed=cfg.seed, frame_cache=cache)
    world = (ctx.rank, ctx.world_size) if ctx.distributed else None
    probe = build_loader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=0,
        distributed=world,
        drop_last=True,
    )
    steps_per_epoch = len(probe) // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the training set ({len(train_samples)} videos) is smaller than one optimiser step "
            f"(train.batch_size {cfg.train.batch_size} x grad_accum {cfg.train.grad_accum} x "
            f"{ctx.world_size} processes)"
        )
    total = _total_steps(cfg, steps_per_epoch)
    total_batch = cfg.train.batch_size * cfg.train.grad_accum * ctx.world_size
    peak_lr = scaled_lr(cfg.optim, total_batch)
    optimizer = build_optimizer(model, cfg.optim, peak_lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None

    layout = _Layout(cfg.train.batch_size, cfg.train.grad_accum, ctx.world_size)
    manager = CheckpointManager(out / "checkpoints", cfg.checkpoint.keep_last)
    bad_log = BadDataLog()
    step, best, own_rng = 0, None, False
    resume_path = manager.latest() if resume is True else (Path(resume) if resume else None)
    if resume is True and resume_path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {manager.folder}")
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        step, own_rng = _resume_position(
            state, resume_path, cfg, layout, steps_per_epoch, len(train_samples), model
        )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        best = state["best_metric"]
        bad_log.merge(state["bad_data"]["bad"])
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank + step)  # dropout masks differ per rank
    if own_rng:
        restore_rng_state(state["rng_per_rank"][ctx.rank])
    elif resume_path is not None and "progress" not in state and not ctx.distributed:
        restore_rng_state(state["rng"])  # format v1, one process: exact as before
    # the folder's checkpoints and log are this run's past only when it resumes from one of them
    own_past = resume_path is not None and resume_path.resolve().parent == manager.folder.resolve()
    if ctx.is_main:
        _set_aside_other_checkpoints(manager, step if own_past else None)
    ctx.barrier()

    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    runlog = RunLog(out, enabled=ctx.is_main, truncate_after=step if own_past else None)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "classes.txt").write_text("\n".join(class_names) + "\n")
        log.info("model %s: %s", cfg.model.name, init_report)
        if resume_path is not None:
            log.info("resumed from %s at step %d", resume_path, step)

    def checkpoint_state() -> dict[str, Any]:
        """The checkpoint now; a collective (every rank's RNG state): call it on every rank."""
        rng = ctx.gather_objects(capture_rng_state())
        return _state(
            model, optimizer, scaler, step, cfg, class_names, bad_log, best, rng, layout, steps_per_epoch
        )

    bar = tqdm(
        total=total,
        initial=step,
        **bar_options,
        unit="step",
        disable=not (cfg.train.progress and ctx.is_main),
        dynamic_ncols=True,
    )
    window = {"loss": 0.0, "correct": 0, "clips": 0, "time": time.perf_counter()}
    seen = step * layout.clips_per_step
    bad_synced = [bad_log.count]
    epoch, in_epoch = divmod(step, steps_per_epoch)
    loader = build_loader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        distributed=world,
        drop_last=True,
        start_batch=in_epoch * cfg.train.grad_accum,
        epoch=epoch,
    )
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        loader.sampler.set_epoch(epoch)
        net.train()
        with torch.random.fork_rng(devices=[]):  # worker seeding must not consume our RNG
            batches = iter(loader)
        for _ in range(in_epoch, steps_per_epoch):
            lr = lr_at(step, total, peak_lr, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(cfg.train.grad_accum):
                batch: ClipBatch = next(batches)
                last = micro == cfg.train.grad_accum - 1
                sync = contextlib.nullcontext() if last or not ctx.distributed else net.no_sync()
                with sync, ctx.guard("the gradient all-reduce"), _explain_out_of_memory(layout):
                    loss, correct = _forward_backward(net, batch, cfg, device, fmt, scaler)
                bad_log.add(batch.bad)
                window["loss"] += loss
                window["correct"] += correct
                window["clips"] += len(batch.label)
            with _explain_out_of_memory(layout):
                _optimizer_step(optimizer, scaler)
            step += 1
            seen += layout.clips_per_step
            _sync_bad_data(bad_log, ctx, bad_synced)
            bad_log.check(seen=max(len(train_samples), seen), threshold=cfg.data.bad_data_threshold)
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == total:
                record = _window_record(window, ctx, step, epoch, lr)
                runlog.write(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", clips_s=f"{record['clips_per_s']:.1f}"
                )
            epoch_end = step % steps_per_epoch == 0
            finished_epoch = step // steps_per_epoch
            every_eval = cfg.eval.every_epochs
            if (
                epoch_end
                and val_samples
                and every_eval
                and finished_epoch % every_eval == 0
                and step != total
            ):
                best = _validate(
                    net,
                    model,
                    cfg,
                    ctx,
                    val_samples,
                    fmt,
                    runlog,
                    step,
                    best,
                    manager,
                    checkpoint_state,
                    cache,
                )
            every = cfg.checkpoint.every_iters
            if (step % every == 0 if every else epoch_end) and step != total:
                state = checkpoint_state()
                if ctx.is_main:
                    manager.save(state, step)
                ctx.barrier()
            if step >= total:
                break
    bar.close()

    if cfg.train.precise_bn_batches:
        loader.sampler.set_epoch(total // steps_per_epoch + 1)  # fresh clips, same workers
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        n = update_bn_stats(model, batches, cfg.train.precise_bn_batches, device, fmt, ctx)
        log.info("precise BN: statistics re-estimated over %d batches", n)
    final = None
    if val_samples:
        best = _validate(
            net, model, cfg, ctx, val_samples, fmt, runlog, step, best, manager, checkpoint_state, cache
        )
        final = runlog.last_val
    state = checkpoint_state()
    if ctx.is_main:
        manager.save(state, step)
        save_weights(model, out / "model.safetensors", metadata={"model": cfg.model.name})
        summary = {
            "steps": step,
            "seconds": time.perf_counter() - started,
            "final_eval": final,
            "bad_data": bad_log.summary(),
            "val_bad_data": _val_bad(final),
            "init": init_report,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        runlog.plot(title=cfg.model.name)
    ctx.barrier()
    runlog.close()
    return TrainResult(out, step, final, bad_log.summary(), time.perf_counter() - started)


def _val_bad(final: dict[str, Any] | None) -> dict[str, Any]:
    paths = sorted(set(final["bad_videos"])) if final else []
    return {"count": len(paths), "paths": paths}


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


def _forward_backward(net, batch, cfg, device, fmt, scaler) -> tuple[float, int]:
    """One micro-batch: mean loss over the nominal batch, scaled for accumulation. A batch of
    only broken videos adds a zero gradient; under DDP it still runs the wrapped model (on a
    placeholder clip) so that this rank joins the gradient all-reduce like the others."""
    scale = 1.0 / (cfg.train.batch_size * cfg.train.grad_accum)
    if len(batch.label) == 0:
        if isinstance(net, nn.parallel.DistributedDataParallel):
            _placeholder_backward(net, cfg, device, fmt)
        else:
            loss = sum(p.sum() * 0.0 for p in net.parameters())
            loss.backward()
        return 0.0, 0
    video = batch.video.to(device, non_blocking=True).contiguous(memory_format=fmt)
    labels = batch.label.to(device, non_blocking=True)
    with autocast_context(cfg.train.amp, device):
        logits = net(video)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    (scaler.scale(loss * scale) if scaler is not None else loss * scale).backward()
    return loss.item(), int((logits.argmax(1) == labels).sum())


def _placeholder_backward(net: nn.parallel.DistributedDataParallel, cfg: Config, device, fmt) -> None:
    """A zero-gradient backward through DDP: the forward of a zero clip (no RNG drawn, buffers
    such as BatchNorm statistics restored afterwards), its output times zero."""
    module = net.module
    saved = [b.detach().clone() for b in module.buffers()]
    clip = torch.zeros(1, 3, cfg.data.clip_length, cfg.data.crop, cfg.data.crop, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), autocast_context(cfg.train.amp, device):
        out = net(clip.contiguous(memory_format=fmt))
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


def _sync_bad_data(bad_log: BadDataLog, ctx: DistContext, synced: list[int]) -> None:
    """After each step, give every rank the union of the ranks' broken-video logs whenever some
    rank met a new one: the summary, checkpoints and the threshold check (the same on every
    rank) then count every rank's broken videos, each once. ``synced``: the log's size after
    the last sync (updated)."""
    if ctx.distributed:
        new = torch.tensor([float(bad_log.count - synced[0])])
        ctx.all_reduce_sum(new)
        if new.item() > 0:
            for part in ctx.gather_objects(bad_log.summary()["bad"]):
                bad_log.merge(part)
    synced[0] = bad_log.count


def _window_record(window: dict, ctx: DistContext, step: int, epoch: int, lr: float) -> dict[str, Any]:
    totals = torch.tensor(
        [window["loss"], float(window["correct"]), float(window["clips"])], dtype=torch.float64
    )
    ctx.all_reduce_sum(totals)
    now = time.perf_counter()
    clips = max(totals[2].item(), 1.0)
    record = {
        "kind": "train",
        "step": step,
        "epoch": epoch,
        "loss": totals[0].item() / clips,
        "top1": totals[1].item() / clips,
        "lr": lr,
        "clips_per_s": totals[2].item() / max(now - window["time"], 1e-9),
    }
    window.update(loss=0.0, correct=0, clips=0, time=now)
    return record


def _validate(net, model, cfg, ctx, samples, fmt, runlog, step, best, manager, checkpoint_state, cache=None):
    views = cfg.eval.views
    dataset = build_dataset(cfg.data, samples, train=False, seed=cfg.seed, views=views, frame_cache=cache)
    world = (ctx.rank, ctx.world_size) if ctx.distributed else None
    loader = build_loader(
        dataset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        distributed=world,
        drop_last=False,
    )
    result, bad = evaluate(
        model,
        loader,
        ctx,
        num_classes=cfg.model.num_classes,
        views_per_video=views_per_video(cfg, views),
        window=model.res5_size(cfg.data.crop),
        amp=cfg.train.amp,
        memory_format=fmt,
        progress=cfg.train.progress,
    )
    record = {"kind": "val", "step": step, **result.to_dict(), "bad_videos": [b.path for b in bad]}
    record.pop("per_class_accuracy")
    runlog.write(record)
    metric = result.video_top1  # gathered: the same on every rank
    if best is None or metric > best:
        best = metric
        if cfg.checkpoint.keep_best:
            state = checkpoint_state()  # a collective
            if ctx.is_main:
                manager.save_best(state | {"best_metric": best})
    if math.isnan(metric):
        log.warning("validation accuracy is NaN")
    return best
