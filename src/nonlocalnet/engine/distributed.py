"""Distributed data parallel set-up from torchrun's environment (gloo on CPU, nccl on CUDA),
with collectives that fail loudly (never hang) when a peer dies."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from nonlocalnet.errors import InvalidValueError, NonLocalNetError

__all__ = [
    "DistContext",
    "DistributedError",
    "init_distributed",
    "is_collective_failure",
    "is_out_of_memory",
    "resolve_device",
]


class DistributedError(NonLocalNetError, RuntimeError):
    """A collective failed: another process died or stopped responding."""


# what gloo, nccl and the process group say when a peer is gone or a collective times out
_COLLECTIVE_MARKERS = (
    "gloo",
    "nccl",
    "connection closed",
    "connection reset",
    "connection refused",
    "broken pipe",
    "timed out",
    "timeout",
    "collective",
    "process group",
    "processgroup",
    "peer",
    "socket",
    "watchdog",
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (CUDA, CPU or another backend)."""
    text = str(err).lower()
    oom = "out of memory" in text or "can't allocate memory" in text
    return isinstance(err, torch.OutOfMemoryError) or oom


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from a collective (a dead or hung peer, a timeout), not from this
    process's own work: ``torch.distributed``'s errors and the backends' connection/timeout
    messages; never an out-of-memory error."""
    if is_out_of_memory(err):
        return False
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(marker in text for marker in _COLLECTIVE_MARKERS)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@dataclass
class DistContext:
    """Rank, world size and device of this process; ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as err:
            if not (self.distributed and is_collective_failure(err)):
                raise  # this process's own error (e.g. out of memory) keeps its type and message
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed, another training process has "
                f"probably died or hung ({type(err).__name__}: {err})"
            ) from err

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (no-op on one process)."""
        if self.distributed:
            with self._guard("all_reduce"):
                dist.all_reduce(tensor)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with self._guard("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            with self._guard("barrier"):
                dist.barrier()

    def guard(self, what: str):
        """Turn collective failures inside the block (e.g. DDP's gradient all-reduce) into
        :class:`DistributedError` in a multi-process run (:func:`is_collective_failure`); any
        other error, and every error of a single process, passes through unchanged."""
        return self._guard(what)

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
    ``MASTER_ADDR``/``MASTER_PORT``; a single process when ``WORLD_SIZE`` is unset or 1.

    Collectives time out after ``timeout_s`` instead of waiting forever for a dead peer.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    except Exception as err:
        raise DistributedError(
            f"rank {rank}/{world}: could not join the process group ({backend}, "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {err}"
        ) from err
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)
