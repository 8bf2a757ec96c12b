"""Weights by file type, read and loaded in one place: model initialisation, ``nonlocalnet
eval``, ``nonlocalnet predict`` and the CLI all call :func:`read_model_file` and
:func:`load_model_file`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.models.caffe2 import caffe2_norm, load_caffe2_checkpoint, read_caffe2_pickle
from nonlocalnet.models.pretrained import weights_file
from nonlocalnet.models.released import (
    ReleasedCheckpoint,
    check_bn_form,
    check_model_matches,
    released_checkpoint_info,
    released_info_from_metadata,
)
from nonlocalnet.models.resnet3d import VideoResNet
from nonlocalnet.models.weights import load_failure
from nonlocalnet.models.zoo import is_weights_name

__all__ = ["ModelFile", "load_model_file", "read_model_file"]


@dataclass
class ModelFile:
    """What a weights file holds. ``kind``: ``safetensors`` (ours), ``caffe2`` (the released
    ``.pkl``: blob names, not a state dict), ``checkpoint`` (a training checkpoint: a state dict
    under ``model``, with its ``config`` and ``class_names`` when it holds them) or
    ``state_dict`` (any other ``torch.save``'d state dict, e.g. torchvision's, possibly under
    ``state_dict``). ``metadata``: a safetensors file's header metadata (``save_weights``'s:
    e.g. ``model`` and ``variant``)."""

    path: Path
    kind: str
    state: dict[str, Any]
    config: dict[str, Any] | None = None
    class_names: list[str] | None = None
    metadata: dict[str, str] | None = None

    @property
    def released(self) -> ReleasedCheckpoint | None:
        """The authors' file these weights are, and so the network they belong to: a ``.pkl``
        by its released name, our safetensors by its metadata (``variant: released``)."""
        if self.kind == "caffe2":
            return released_checkpoint_info(self.path)
        if self.kind == "safetensors":
            return released_info_from_metadata(
                self.metadata or {}, source=self.path.name, tensor_names=self.state
            )
        return None


def read_model_file(path: str | os.PathLike, *, kinds: tuple[str, ...] | None = None) -> ModelFile:
    """Read ``path`` by its type (``.safetensors``, ``.pkl``, else ``torch.load`` without pickle
    code). ``kinds``: the kinds the caller accepts; another is a ``ValueError`` naming both. A
    weights name (``nonlocalnet weights``) that is not a file reads the downloaded (and converted)
    file of those weights (:func:`~nonlocalnet.models.weights_file`)."""
    path = Path(path)
    if not path.is_file() and is_weights_name(os.fspath(path)):
        path = weights_file(os.fspath(path))
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
        except Exception as err:  # safetensors' own error type: a damaged or foreign file
            raise InvalidValueError(f"{path} is not a readable safetensors file: {err}") from err
        found = ModelFile(path, "safetensors", state, metadata=dict(metadata or {}))
    elif path.suffix == ".pkl":
        found = ModelFile(path, "caffe2", read_caffe2_pickle(path))
    else:
        found = _read_torch_file(path)
    if kinds is not None and found.kind not in kinds:
        raise InvalidValueError(f"{path} is a {found.kind} file; expected one of {list(kinds)}")
    return found


def load_model_file(model: nn.Module, weights: ModelFile, *, keys: Mapping[str, str] | None = None) -> str:
    """Load ``weights`` into ``model`` strictly; returns a one-line report.

    The authors' weights (:attr:`ModelFile.released`) go only into the network they belong to:
    a :class:`~nonlocalnet.models.VideoResNet` ``model`` is checked first
    (:func:`~nonlocalnet.models.check_model_matches`: registry model and so frame geometry,
    variant, BN form, ...), and a ``.pkl`` of another name must have the model's BN form; else
    the error names each setting that differs as ``keys`` spells it (the library's keywords by
    default; a task passes its config's spelling, e.g. ``model.variant``) and its fix. The report
    says which clips (frames x sample rate) the authors used."""
    released = weights.released
    if released is not None and isinstance(model, VideoResNet):
        check_model_matches(model, released, source=weights.path.name, keys=keys)
    if weights.kind == "caffe2":
        if released is None and isinstance(model, VideoResNet):
            check_bn_form(model, caffe2_norm(weights.state), source=weights.path.name, keys=keys)
        report = load_caffe2_checkpoint(model, weights.state)
        line = f"released Caffe2 weights from {weights.path}: {report.summary()}"
    else:
        model.load_state_dict(weights.state)
        line = {
            "checkpoint": f"model weights of training checkpoint {weights.path}",
            "safetensors": f"weights from {weights.path}",
        }.get(weights.kind, f"state dict from {weights.path}")
    if released is not None:
        line += (
            f" ({released.describe()}; the authors trained and tested it on clips of {released.frames} "
            f"frames every {released.sample_rate}: data.clip_length {released.frames}, data.stride "
            f"{released.sample_rate})"
        )
    return line


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
