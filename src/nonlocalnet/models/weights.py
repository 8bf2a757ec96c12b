"""Our own checkpoints: safetensors files of the state dict with string metadata, written
atomically; the metadata is read back and checked when the weights are loaded."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from nonlocalnet.atomic import atomic_write
from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingFileError, check_module
from nonlocalnet.models.released import check_model_matches, released_info_from_metadata
from nonlocalnet.models.resnet3d import VideoResNet

__all__ = ["load_weights", "read_weights_metadata", "save_weights"]


def save_weights(
    model_or_state: nn.Module | dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the state dict as safetensors: to a temporary file, fsync, then rename, so a crash
    never leaves a half-written checkpoint under ``path``. ``metadata``: strings under string
    keys, read back by :func:`read_weights_metadata`; ``variant: released`` marks the authors'
    weights (``model``, ``backbone_norm``, ``source_file``: see :func:`load_weights`)."""
    from safetensors.torch import save_file

    if not isinstance(model_or_state, nn.Module | dict):
        raise InvalidTypeError(
            "save_weights(model, path): model must be an nn.Module or a state dict, "
            f"got {type(model_or_state).__name__}"
        )
    bad = [
        f"{k!r}: {v!r}"
        for k, v in (metadata or {}).items()
        if not (isinstance(k, str) and isinstance(v, str))
    ]
    if bad:
        raise InvalidTypeError(f"save_weights metadata holds strings only; not strings: {', '.join(bad)}")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file (``{}`` if it has none); the tensors are not read."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise MissingFileError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors' own error type: a damaged or foreign file
        raise InvalidValueError(f"{path} is not a readable safetensors file: {err}") from err


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load a safetensors state dict into ``model`` (no pickle involved); returns the model.

    A file whose metadata says ``variant: released`` holds the authors' weights (``nonlocalnet
    convert-caffe2`` writes it): a :class:`VideoResNet` ``model`` must be the network they belong
    to (:func:`~nonlocalnet.models.check_model_matches`), else nothing is loaded and the error
    names each setting that differs."""
    from safetensors.torch import load_file

    check_module(model, "load_weights(model, path)")
    metadata = read_weights_metadata(path)
    state = load_file(str(path))
    if isinstance(model, VideoResNet):
        info = released_info_from_metadata(metadata, source=Path(path).name, tensor_names=state)
        if info is not None:
            check_model_matches(model, info, source=Path(path).name)
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(f"partial load from {path}: {result}", stacklevel=2)
    return model


def load_failure(path: Path, err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line (torch's own message is
    many lines and suggests ``weights_only=False``, which would run the file's code)."""
    text = str(err).strip()
    whole = zipfile.is_zipfile(path)  # torch.save writes a zip archive; its index is at the end
    if "Weights only load failed" in text and whole:
        return "it holds Python objects besides tensors and plain data, which are not unpickled"
    if isinstance(err, EOFError) or not text:
        return f"the file ends early (empty or truncated; {type(err).__name__})"
    if not whole:
        return "not a complete file written by torch.save (truncated, or another format)"
    return text.splitlines()[0]
