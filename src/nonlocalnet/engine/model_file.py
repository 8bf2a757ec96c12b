"""Weights by file type, read in one place: model initialisation, ``nonlocalnet eval``,
``nonlocalnet predict`` and the CLI all call :func:`read_model_file`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nonlocalnet.engine.checkpoint import load_failure
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.models import read_caffe2_pickle

__all__ = ["ModelFile", "read_model_file"]


@dataclass
class ModelFile:
    """What a weights file holds. ``kind``: ``safetensors`` (ours), ``caffe2`` (the released
    ``.pkl``: blob names, not a state dict), ``checkpoint`` (a training checkpoint: a state dict
    under ``model``, with its ``config`` and ``class_names`` when it holds them) or
    ``state_dict`` (any other ``torch.save``'d state dict, e.g. torchvision's, possibly under
    ``state_dict``)."""

    path: Path
    kind: str
    state: dict[str, Any]
    config: dict[str, Any] | None = None
    class_names: list[str] | None = None


def read_model_file(path: str | os.PathLike, *, kinds: tuple[str, ...] | None = None) -> ModelFile:
    """Read ``path`` by its type (``.safetensors``, ``.pkl``, else ``torch.load`` without pickle
    code). ``kinds``: the kinds the caller accepts; another is a ``ValueError`` naming both."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' own error type: a damaged or foreign file
            raise InvalidValueError(f"{path} is not a readable safetensors file: {err}") from err
        found = ModelFile(path, "safetensors", state)
    elif path.suffix == ".pkl":
        found = ModelFile(path, "caffe2", read_caffe2_pickle(path))
    else:
        found = _read_torch_file(path)
    if kinds is not None and found.kind not in kinds:
        raise InvalidValueError(f"{path} is a {found.kind} file; expected one of {list(kinds)}")
    return found


def _read_torch_file(path: Path) -> ModelFile:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InvalidValueError(
            f"{path} is not a readable nonlocalnet checkpoint: {load_failure(path, err)}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        names = state.get("class_names")
        names = list(names) if names else None
        return ModelFile(path, "checkpoint", state["model"], state.get("config"), names)
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise InvalidValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return ModelFile(path, "state_dict", state)
