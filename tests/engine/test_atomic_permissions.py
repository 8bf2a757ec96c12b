"""Atomically written files get the permissions ``open()`` gives a new file (``0o666`` less the
umask), not ``mkstemp``'s ``0o600``: checkpoints, ``model.safetensors`` and ``config.yaml`` are
readable by the group under a 022 or 027 umask. No temporary file is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from nonlocalnet import atomic
from nonlocalnet.atomic import atomic_write, atomic_write_bytes
from nonlocalnet.engine import CheckpointManager, save_checkpoint
from nonlocalnet.engine.config import Config, save_config
from nonlocalnet.models.weights import save_weights

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    """The process umask set to the parameter for the test, and restored after it."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_temporary_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert not leftovers, leftovers


def test_written_files_follow_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    with open(tmp_path / "reference", "wb"):
        pass
    assert _mode(tmp_path / "reference") == expected  # what open() gives

    written = [
        atomic_write_bytes(tmp_path / "data.bin", b"abc"),
        atomic_write(tmp_path / "text.txt", lambda tmp: Path(tmp).write_text("x")),
        save_checkpoint(tmp_path / "ckpt" / "iter_00000001.pt", {"model": {"w": torch.ones(2)}, "step": 1}),
    ]
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    written += [
        manager.save({"model": {"w": torch.zeros(2)}, "step": 2}, 2),
        manager.save_best({"model": {}}),
    ]
    save_weights(nn.Linear(2, 3), tmp_path / "model.safetensors")
    save_config(Config(), tmp_path / "config.yaml")
    written += [tmp_path / "model.safetensors", tmp_path / "config.yaml"]
    for path in written:
        assert path.is_file(), path
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))}, expected {oct(expected)}"
    # overwriting an existing file gives the new file the same mode
    atomic_write_bytes(tmp_path / "data.bin", b"abcd")
    assert _mode(tmp_path / "data.bin") == expected
    _no_temporary_files(tmp_path)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, umask):
    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "x.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_the_umask_is_read_without_changing_it(monkeypatch, umask):
    assert atomic._umask() == umask  # /proc/self/status on Linux
    monkeypatch.setattr(atomic, "_PROC_STATUS", "/nonexistent/status")  # other systems: os.umask
    assert atomic._umask() == umask
    assert os.umask(umask) == umask  # still in place after both reads


def test_a_replaced_file_keeps_its_mode_as_with_open(tmp_path, umask):
    path = tmp_path / "shared.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with open(tmp_path / "reference", "wb"):
        pass
    (tmp_path / "reference").chmod(0o640)
    with open(tmp_path / "reference", "wb") as f:  # open() keeps an existing file's mode
        f.write(b"new")
    atomic_write_bytes(path, b"new")
    assert _mode(path) == _mode(tmp_path / "reference") == 0o640 and path.read_bytes() == b"new"
    _no_temporary_files(tmp_path)
