"""Edges of 2-process DDP training (2 CPU processes over gloo): micro-batches of only broken
videos, broken-video lists of every rank, exact resume with dropout, and error types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from launch import metrics, train, weights
from tiny_video import tiny_config, write_config

from nonlocalnet.engine import load_checkpoint
from nonlocalnet.engine import train as train_in_process
from nonlocalnet.engine.distributed import DistContext, DistributedError
from nonlocalnet.tasks import config_from_dict


def _broken_list(tmp_path: Path, tiny_data) -> dict:
    lines = [f"{tiny_data['root'] / line}" for line in tiny_data["list"].read_text().splitlines()]
    lines += [f"{tmp_path / 'missing_a.mp4'} 0", f"{tmp_path / 'missing_b.mp4'} 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return {**tiny_data, "list": tmp_path / "list.txt"}


def test_a_micro_batch_of_only_broken_videos_on_one_rank_joins_the_all_reduce(tmp_path, tiny_data):
    # 10 videos, 2 of them missing, batch 1 per process: some steps have a broken video on one
    # rank only. That rank must take a zero-gradient step in step with the other, so the result
    # equals one process with batch 2 (whose step then averages the good clip over 2).
    data = _broken_list(tmp_path, tiny_data)

    def config(name: str, batch: int, norm: str = "affine") -> Path:
        cfg = tiny_config(
            data,
            tmp_path / name,
            model={"backbone_norm": norm},
            data={"bad_data_threshold": 0.5},
            train={"epochs": 2, "batch_size": batch},
            eval={"every_epochs": 0},
            checkpoint={"every_iters": 1},
        )
        return write_config(tmp_path / f"{name}.yaml", cfg)

    train(config("one", 2))
    train(config("two", 1), procs=2)
    # Weights are compared from a common start: from scratch, float32 rounding (1 GEMM over 2 clips
    # vs 2 clips all-reduced) flips max-pool argmaxes among tied values of the clips' flat squares at
    # step 3, before any broken video, and the lr 0.05 steps amplify that to ~1e-3. Resumed from
    # the 1-process run's step 3, the 2-process run covers step 4 (both ranks broken) and steps 6, 7
    # (one rank broken) and agrees to ~1e-7 (steps 6 and 7 alone: bit for bit).
    start = tmp_path / "one" / "checkpoints" / "iter_00000003.pt"
    train(config("two_resumed", 1), "--resume", str(start), procs=2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two_resumed")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)

    # with BatchNorm too: the placeholder forward leaves the statistics as they were
    train(config("two_bn", 1, norm="batchnorm"), procs=2)

    # every rank's broken videos are listed, in the summary and in the checkpoint (item 2)
    expected = ["missing_a.mp4", "missing_b.mp4"]
    for run in ("one", "two", "two_bn"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert sorted(Path(e["path"]).name for e in summary["bad_data"]["bad"]) == expected, run
        assert summary["bad_data"]["count"] == 2, run
        final = load_checkpoint(tmp_path / run / "checkpoints" / "iter_00000010.pt")
        assert sorted(Path(e["path"]).name for e in final["bad_data"]["bad"]) == expected, run


def test_a_ddp_resume_with_dropout_is_exact(tmp_path, tiny_data):
    # Each rank draws its own dropout masks; a checkpoint must hold every rank's RNG state, so
    # that a resumed run continues each rank's stream (and the ranks' streams stay distinct).
    def config(name: str) -> Path:
        cfg = tiny_config(
            tiny_data,
            tmp_path / name,
            model={"backbone_norm": "affine", "dropout": 0.5},
            train={"epochs": 3, "batch_size": 2},
            checkpoint={"every_iters": 1},
            eval={"every_epochs": 0},
        )
        return write_config(tmp_path / f"{name}.yaml", cfg)

    train(config("whole"), procs=2)  # 2 steps per epoch, 6 in all
    start = tmp_path / "whole" / "checkpoints" / "iter_00000003.pt"  # mid-epoch
    assert len(load_checkpoint(start)["rng_per_rank"]) == 2
    train(config("resumed"), "--resume", str(start), procs=2)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole = [r for r in metrics(tmp_path / "whole") if r["step"] > 3]
    assert metrics(tmp_path / "resumed") == whole


def test_only_collective_failures_in_a_multi_process_run_are_distributed_errors():
    one, two = DistContext(), DistContext(rank=1, world_size=2)
    for ctx in (one, two):
        with pytest.raises(RuntimeError, match="bad shape") as info, ctx.guard("the step"):
            raise RuntimeError("bad shape")
        assert type(info.value) is RuntimeError
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"), ctx.guard("the step"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with pytest.raises(RuntimeError) as info, ctx.guard("the step"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")
        assert type(info.value) is RuntimeError
    with pytest.raises(DistributedError, match="rank 1/2: the step failed"), two.guard("the step"):
        raise dist.DistBackendError("NCCL communicator was aborted")
    with pytest.raises(DistributedError, match="Connection closed by peer"), two.guard("the step"):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    with pytest.raises(RuntimeError) as info, one.guard("the step"):  # one process: no peer to blame
        raise dist.DistBackendError("NCCL error: unhandled cuda error")
    assert not isinstance(info.value, DistributedError)


def test_out_of_memory_in_a_step_keeps_its_type_and_suggests_a_smaller_batch(
    tmp_path, tiny_data, monkeypatch
):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(F, "cross_entropy", no_memory)
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", train={"batch_size": 2, "epochs": 1}))
    with pytest.raises(torch.OutOfMemoryError) as info:
        train_in_process(cfg)
    message = str(info.value)
    assert "Tried to allocate 20.00 GiB" in message
    assert "train.batch_size" in message and "train.grad_accum" in message
    assert "another training process" not in message


def test_the_placeholder_step_changes_no_statistics_and_draws_no_random_numbers(tiny_data, tmp_path):
    from nonlocalnet.engine.step import placeholder_backward
    from nonlocalnet.tasks.video import build_model_from_config

    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", model={"dropout": 0.5}))
    model = build_model_from_config(cfg.model)  # BatchNorm and dropout
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        net = torch.nn.parallel.DistributedDataParallel(model)
        net.train()
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        rng = torch.get_rng_state()
        clip = torch.zeros(1, 3, cfg.data.clip_length, cfg.data.crop, cfg.data.crop)
        placeholder_backward(net, lambda: net(clip), cfg.train.amp, torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), rng)
        for key, value in model.named_buffers():
            assert torch.equal(value, buffers[key]), key
        for name, p in model.named_parameters():
            assert p.grad is not None and not p.grad.any(), name
    finally:
        dist.destroy_process_group()


def test_the_non_local_lr_multiplier_under_two_processes(tmp_path, tiny_data):
    """torchrun with 2 processes: the blocks' groups step at lr x nonlocal_lr_mult (DDP wraps the
    model the groups were built from), and at x 0 the block stays the identity on every rank."""

    def run(name: str, mult: float) -> Path:
        cfg = tiny_config(
            tiny_data,
            tmp_path / name,
            model={"backbone_norm": "affine"},
            optim={"nonlocal_lr_mult": mult},
            train={"epochs": 1, "batch_size": 1},
            eval={"every_epochs": 0},
            checkpoint={"every_iters": 2},
        )
        train(write_config(tmp_path / f"{name}.yaml", cfg), procs=2)
        return tmp_path / name

    groups = load_checkpoint(next((run("ten", 10.0) / "checkpoints").glob("iter_*.pt")))["optimizer"][
        "param_groups"
    ]
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0, 10.0, 10.0]
    assert groups[2]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    frozen = weights(run("zero", 0.0))
    (scale,) = [k for k in frozen if "nl" in k.split(".") and k.endswith(".norm.weight")]
    assert torch.count_nonzero(frozen[scale]) == 0
