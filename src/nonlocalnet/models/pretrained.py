"""The usable files of named weights, and loading them into a built model.

:func:`weights_file`: an entry of the catalogue (:mod:`nonlocalnet.models.zoo`) downloaded once
into the cache and, for an authors' ``.pkl``, converted once to safetensors next to it (a Kinetics
model: our state dict through :func:`~nonlocalnet.models.convert_caffe2_checkpoint`, with its
settings in the metadata; an ImageNet ``.pkl``: its Caffe2 blobs). torchvision's ``.pth`` files are
used as they are (``torch.load(weights_only=True)``): the same files, in the same folder, that
torchvision itself downloads. :func:`load_named_weights` loads them into a model built by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingFileError, check_module
from nonlocalnet.models.caffe2 import caffe2_to_torch_name, convert_caffe2_checkpoint, read_caffe2_pickle
from nonlocalnet.models.download import file_lock
from nonlocalnet.models.inflate import inflate_2d_to_3d
from nonlocalnet.models.insert import NONLOCAL_ATTR
from nonlocalnet.models.resnet3d import VideoResNet
from nonlocalnet.models.weights import save_weights
from nonlocalnet.models.zoo import (
    WeightsEntry,
    cache_paths,
    check_weights_fit,
    download_weights,
    extract_member,
    get_weights,
    is_weights_name,
    released_info,
    video_weights,
)

__all__ = ["load_named_weights", "resolve_weights", "weights_file"]


def weights_file(
    name: str | WeightsEntry,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> Path:
    """The local file of the weights ``name``: downloaded on first use (into ``cache_dir``, default
    :func:`~nonlocalnet.models.download.default_cache_dir`), checked, and for a ``.pkl``
    converted once to ``<name>.safetensors`` next to it. A file already there (put by hand, or by
    torchvision) is checked against the published hash before its first conversion and used."""
    entry = get_weights(name)
    raw, target = cache_paths(entry, cache_dir=cache_dir)
    if not entry.converted:  # torchvision's .pth: used as it is, checked on every use
        download_weights(entry, raw, mirror=mirror, progress=progress)
        return raw
    if target.is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():  # another process converted it meanwhile
            return target
        url = download_weights(entry, raw, mirror=mirror, progress=progress)
        source = extract_member(raw, entry.member, target.with_suffix(".pkl")) if entry.member else raw
        _convert(entry, source, target, url)
    return target


def _convert(entry: WeightsEntry, raw: Path, target: Path, url: str) -> None:
    """An authors' ``.pkl`` -> safetensors: a Kinetics model as our state dict, through
    :func:`convert_caffe2_checkpoint` (its registry model, every tensor checked, the settings in
    the metadata); an ImageNet one as its Caffe2 blobs (solver blobs left out)."""
    if entry.kind == "kinetics":
        convert_caffe2_checkpoint(
            raw, target, model=entry.model, backbone_norm=entry.backbone_norm, num_classes=entry.num_classes
        )
        return
    tensors = {}
    for key, value in read_caffe2_pickle(raw).items():
        try:
            aux = caffe2_to_torch_name(key) is None
        except KeyError:
            aux = False  # kept: reported by whoever loads it
        if not aux and value.dtype.kind in "fiub":
            tensors[key] = torch.from_numpy(value.copy())
    meta = {
        "weights": entry.name,
        "source_file": entry.file_name,
        "source_url": url,
        "format": "caffe2_blobs",
    }
    save_weights(tensors, target, metadata=meta)


def resolve_weights(value: str | os.PathLike, **fetch: Any) -> Path:
    """``value`` as a file: an existing path as it is, a catalogue name through
    :func:`weights_file` (``fetch``: its keywords); anything else is a :class:`MissingFileError`
    naming both readings."""
    path = Path(value)
    if path.is_file():
        return path
    if is_weights_name(os.fspath(value)):
        return weights_file(os.fspath(value), **fetch)
    raise MissingFileError(
        f"{os.fspath(value)!r} is neither a file nor a weights name (`nonlocalnet weights` lists the names)"
    )


def load_named_weights(
    model: nn.Module, name: str | WeightsEntry, *, keys: Mapping[str, str] | None = None, **fetch: Any
) -> str:
    """Load the weights ``name`` into the video ``model`` (from
    :func:`~nonlocalnet.models.build_model`); returns a one-line report.

    Kinetics weights go only into the network they belong to
    (:func:`~nonlocalnet.models.zoo.check_weights_fit`; ``keys``: how the caller spells the
    settings in the error, e.g. config keys); they load as they are, except that the model's
    non-local blocks a baseline file lacks keep their identity initialisation, and a classifier of
    another class count is re-initialised (fine-tuning): both are reported. Any other missing,
    unexpected or mis-shaped tensor is an error and nothing is loaded. ImageNet weights are
    inflated (:func:`inflate_2d_to_3d`). ``fetch``: :func:`weights_file`'s keywords
    (``cache_dir``, ``mirror``, ``progress``)."""
    check_module(model, "load_named_weights(model, name)")
    entry = video_weights(name)
    if entry.kind == "kinetics":
        if not isinstance(model, VideoResNet):
            raise InvalidTypeError(
                f"{entry.name} load into a VideoResNet (build_model), got {type(model).__name__}"
            )
        check_weights_fit(model, entry, keys=keys)  # before anything is downloaded
    from safetensors.torch import load_file

    path = weights_file(entry, **fetch)
    if entry.kind == "imagenet":
        state = load_file(str(path)) if path.suffix == ".safetensors" else _torch_state(path)
        return f"{entry.name} inflated from {path}: {inflate_2d_to_3d(model, state).summary()}"
    info = released_info(entry)
    return (
        f"{entry.name} from {path}: {_load_kinetics(model, load_file(str(path)), entry)} "
        f"({info.describe()}; the authors trained and tested it on clips of {info.frames} frames every "
        f"{info.sample_rate}: data.clip_length {info.frames}, data.stride {info.sample_rate})"
    )


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ``.pth`` state dict, read without pickle code (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file
        raise InvalidValueError(
            f"{path} is not a readable state dict ({err}); delete it to download it again"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InvalidValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_kinetics(model: nn.Module, state: dict[str, torch.Tensor], entry: WeightsEntry) -> str:
    own = model.state_dict()
    kept = sorted(k for k in own.keys() - state.keys() if f".{NONLOCAL_ATTR}." in k)
    missing = sorted(own.keys() - state.keys() - set(kept))
    unexpected = sorted(state.keys() - own.keys())
    shaped = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    head = [k for k in shaped if k.startswith("fc.")]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shaped if k not in head
    ]
    if missing or unexpected or wrong:
        lines = [
            f"{entry.name} does not fit this model (it is {entry.model}, variant {entry.variant}, "
            f"backbone_norm {entry.backbone_norm}); nothing was loaded"
        ]
        for label, items in (
            ("missing from the file", missing),
            ("not in the model", unexpected),
            ("shape mismatches", wrong),
        ):
            if items:
                lines.append(
                    f"{len(items)} {label}: {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
                )
        raise InvalidValueError("\n".join(lines))
    with torch.no_grad():
        for key, value in state.items():
            if key not in head:
                own[key].copy_(value)
    parts = [f"loaded {len(state) - len(head)} tensors"]
    if kept:
        parts.append(f"{len(kept)} non-local block tensors kept at their identity initialisation")
    if head:
        parts.append(
            f"classifier re-initialised ({entry.num_classes} -> {own['fc.weight'].shape[0]} classes)"
        )
    return "; ".join(parts)
