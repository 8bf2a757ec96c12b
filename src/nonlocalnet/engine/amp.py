"""Mixed precision: bf16 autocast on CPU or CUDA, fp16 on CUDA (with a GradScaler)."""

from __future__ import annotations

import contextlib

import torch

from nonlocalnet.engine.config import ConfigError

__all__ = ["autocast_context"]


def autocast_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in ``{"none", "bf16", "fp16"}``; fp16 needs CUDA."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 autocast needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
