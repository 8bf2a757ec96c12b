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
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from nonlocalnet.engine.config import Config, ConfigError, config_to_dict, save_config
from nonlocalnet.engine.distributed import DistContext, init_distributed
from nonlocalnet.engine.evaluate import evaluate, views_per_video
from nonlocalnet.engine.optim import build_optimizer, lr_at, scaled_lr
from nonlocalnet.engine.precise_bn import update_bn_stats
from nonlocalnet.engine.runlog import RunLog
from nonlocalnet.engine.setup import build_dataset, build_model_from_config, initialise_model, load_samples
from nonlocalnet.models import choose_memory_format, save_weights

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


def _state(model, optimizer, scaler, step, cfg, class_names, bad_log, best) -> dict[str, Any]:
    return {
        "format": "nonlocalnet-train-v1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": capture_rng_state(),
        "step": step,
        "config": config_to_dict(cfg),
        "class_names": list(class_names),
        "bad_data": bad_log.summary(),
        "best_metric": best,
    }


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
    that checkpoint. Model, optimiser, scaler, RNG states and the position inside the epoch are
    restored, so the run continues exactly where the checkpoint was taken. ``frame_cache``: a
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

    manager = CheckpointManager(out / "checkpoints", cfg.checkpoint.keep_last)
    bad_log = BadDataLog()
    step, best = 0, None
    resume_path = manager.latest() if resume is True else (Path(resume) if resume else None)
    if resume is True and resume_path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {manager.folder}")
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, best = state["step"], state["best_metric"]
        bad_log.merge(state["bad_data"]["bad"])
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank + step)  # dropout masks differ per rank
    if resume_path is not None:
        restore_rng_state(state["rng"])

    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    runlog = RunLog(out, enabled=ctx.is_main, truncate_after=step if resume_path else None)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "classes.txt").write_text("\n".join(class_names) + "\n")
        log.info("model %s: %s", cfg.model.name, init_report)
        if resume_path is not None:
            log.info("resumed from %s at step %d", resume_path, step)

    def checkpoint_state() -> dict[str, Any]:
        return _state(model, optimizer, scaler, step, cfg, class_names, bad_log, best)

    bar = tqdm(
        total=total,
        initial=step,
        **bar_options,
        unit="step",
        disable=not (cfg.train.progress and ctx.is_main),
        dynamic_ncols=True,
    )
    window = {"loss": 0.0, "correct": 0, "clips": 0, "time": time.perf_counter()}
    seen = step * cfg.train.batch_size * cfg.train.grad_accum * ctx.world_size
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
                with sync, ctx.guard("the gradient all-reduce"):
                    loss, correct = _forward_backward(net, batch, cfg, device, fmt, scaler)
                bad_log.add(batch.bad)
                window["loss"] += loss
                window["correct"] += correct
                window["clips"] += len(batch.label)
            _optimizer_step(optimizer, scaler)
            step += 1
            seen += cfg.train.batch_size * cfg.train.grad_accum * ctx.world_size
            _check_bad_data(bad_log, ctx, seen, cfg.data.bad_data_threshold, len(train_samples))
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
                if ctx.is_main:
                    manager.save(checkpoint_state(), step)
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
    if ctx.is_main:
        manager.save(checkpoint_state(), step)
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


def _forward_backward(net, batch, cfg, device, fmt, scaler) -> tuple[float, int]:
    """One micro-batch: mean loss over the nominal batch, scaled for accumulation. A batch of
    only broken videos still joins the all-reduce (zero gradient)."""
    scale = 1.0 / (cfg.train.batch_size * cfg.train.grad_accum)
    if len(batch.label) == 0:
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


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_bad_data(bad_log: BadDataLog, ctx: DistContext, seen: int, threshold: float, size: int) -> None:
    """Stop when broken videos exceed ``threshold`` of the data (counted over all ranks)."""
    count = torch.tensor([float(bad_log.count)])
    ctx.all_reduce_sum(count)
    allowed = threshold * max(size, seen)
    if count.item() > allowed:
        if ctx.distributed:
            entries = [e for part in ctx.gather_objects(bad_log.summary()["bad"]) for e in part]
            bad_log.merge(entries)
        bad_log.check(seen=max(size, seen), threshold=threshold)


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
    metric = result.video_top1
    if best is None or metric > best:
        best = metric
        if ctx.is_main and cfg.checkpoint.keep_best:
            manager.save_best(checkpoint_state() | {"best_metric": best})
    if math.isnan(metric):
        log.warning("validation accuracy is NaN")
    return best
