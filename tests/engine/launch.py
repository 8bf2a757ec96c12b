"""Running the CLI in subprocesses for the engine tests: one process, torchrun, kill on a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

PYTHON = sys.executable


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def command(config: Path, *args: str, procs: int = 1, cmd: str = "train") -> list[str]:
    """``nonlocalnet <cmd> --config config *args``, under torchrun when ``procs > 1``."""
    launcher = [PYTHON, "-m"]
    if procs > 1:
        launcher += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m"]
    return [*launcher, "nonlocalnet.cli", cmd, "--config", str(config), *args]


def train(
    config: Path, *args: str, procs: int = 1, check: bool = True, cmd: str = "train"
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(config, *args, procs=procs, cmd=cmd), env=env(), capture_output=True, timeout=300
    )
    if check:
        assert done.returncode == 0, done.stderr.decode()[-4000:]
    return done


def _killed_when(argv: list[str], what: str, happened: Callable[[], bool], timeout: float) -> None:
    """Start ``argv`` and SIGKILL it (its loader workers then die with it) once ``happened()``."""
    proc = subprocess.Popen(argv, env=env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not happened():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"run ended or timed out before {what}: {proc.communicate()}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def train_killed_at(
    config: Path, checkpoint: Path, *args: str, timeout: float = 120.0, cmd: str = "train"
) -> None:
    """Start a one-process run and SIGKILL it as soon as ``checkpoint`` exists."""
    argv = command(config, *args, cmd=cmd)
    _killed_when(argv, f"{checkpoint} appeared", checkpoint.exists, timeout)


def train_killed_after_step(
    config: Path, run: Path, step: int, *args: str, timeout: float = 120.0, cmd: str = "train"
) -> None:
    """Start a one-process run (``log_every: 1``) and SIGKILL it as soon as its metrics log
    holds the training record of ``step`` (mid-epoch, between checkpoints, as a crash would)."""

    def logged() -> bool:
        log = run / "metrics.jsonl"
        lines = log.read_text().splitlines(keepends=True) if log.exists() else []
        records = [json.loads(line) for line in lines if line.endswith("\n")]  # whole lines only
        return any(r["kind"] == "train" and r["step"] == step for r in records)

    _killed_when(command(config, *args, cmd=cmd), f"step {step} was logged", logged, timeout)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def metrics(run: Path) -> list[dict]:
    """The metrics log without its timing field."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("samples_per_s", None)
    return records
