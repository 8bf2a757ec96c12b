"""A checkpoint write that fails (a full disk) stops the run with a message that says so, names
the file and the previous checkpoint; the files on disk stay intact and resume is exact."""

from __future__ import annotations

import errno
from collections import namedtuple

import pytest
import torch
from safetensors.torch import load_file
from tiny_video import tiny_config

from nonlocalnet.engine import CheckpointManager, load_checkpoint, train
from nonlocalnet.engine import checkpoint as checkpoint_module
from nonlocalnet.engine.checkpoint import CheckpointWriteError
from nonlocalnet.tasks import config_from_dict

# 8 videos, batch 2: 4 steps per epoch, 8 in all; checkpoints at 2, 4, 6 and 8
SECTIONS = {
    "model": {"dropout": 0.3},
    "train": {"epochs": 2, "batch_size": 2},
    "checkpoint": {"every_iters": 2, "keep_best": False},
    "eval": {"every_epochs": 0},
}


def _failing_save(fail_at_call: int, error: BaseException):
    """``torch.save`` that writes part of the file and raises on its ``fail_at_call``-th call."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == fail_at_call:
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04" + b"\0" * 100)  # what a full disk leaves behind
            raise error
        return real(obj, f, *args, **kwargs)

    return save


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 53632 vs 53528"),
    ],
    ids=["ENOSPC", "torch-unexpected-pos"],
)
def test_a_full_disk_names_the_file_keeps_the_previous_checkpoint_and_resume_is_exact(
    tmp_path, tiny_data, monkeypatch, one_thread, error
):
    reference = config_from_dict(tiny_config(tiny_data, tmp_path / "reference", **SECTIONS))
    train(reference)
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", **SECTIONS))
    monkeypatch.setattr(torch, "save", _failing_save(3, error))  # the step-6 checkpoint
    if isinstance(error, RuntimeError):  # torch's message does not say why: the free space does
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(CheckpointWriteError) as info:
        train(cfg)
    monkeypatch.undo()
    folder = tmp_path / "run" / "checkpoints"
    message = str(info.value)
    assert "the disk is full" in message, message
    assert f"could not write checkpoint {folder / 'iter_00000006.pt'}" in message, message
    assert f"the previous checkpoint {folder / 'iter_00000004.pt'} is intact" in message, message
    assert isinstance(info.value, OSError) and info.value.__cause__ is error
    assert sorted(p.name for p in folder.iterdir()) == ["iter_00000002.pt", "iter_00000004.pt"]
    assert [load_checkpoint(p)["step"] for p in CheckpointManager(folder).checkpoints()] == [2, 4]

    train(cfg, resume=True)
    final, expected = (
        load_file(tmp_path / "run" / "model.safetensors"),
        load_file(tmp_path / "reference" / "model.safetensors"),
    )
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(final[key], value), key


def test_a_failed_first_write_says_no_checkpoint_was_overwritten(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", broken)
    manager = CheckpointManager(tmp_path / "ckpt")
    with pytest.raises(CheckpointWriteError, match="the write failed .*nothing was overwritten"):
        manager.save({"model": {}}, 1)
    assert list((tmp_path / "ckpt").iterdir()) == []
