"""Our own checkpoints: safetensors files of the state dict, written atomically."""

from __future__ import annotations

import os

import torch
from torch import nn

from nonlocalnet.atomic import atomic_write
from nonlocalnet.deprecation import check_module
from nonlocalnet.errors import InvalidTypeError

__all__ = ["load_weights", "save_weights"]


def save_weights(
    model_or_state: nn.Module | dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the state dict as safetensors: to a temporary file, fsync, then rename, so a crash
    never leaves a half-written checkpoint under ``path``."""
    from safetensors.torch import save_file

    if not isinstance(model_or_state, nn.Module | dict):
        raise InvalidTypeError(
            "save_weights(model, path): model must be an nn.Module or a state dict, "
            f"got {type(model_or_state).__name__}"
        )
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load a safetensors state dict into ``model`` (no pickle involved); returns the model."""
    from safetensors.torch import load_file

    check_module(model, "load_weights(model, path)")
    state = load_file(str(path))
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(f"partial load from {path}: {result}", stacklevel=2)
    return model
