"""The authors' released Caffe2 checkpoints (.pkl): safe reading, name mapping, loading, export.

A released file is a Python 2 pickle of ``{'blobs': {name: numpy array}}`` (sometimes a flat
dict), read with ``encoding='latin1'``. A pickle can run arbitrary code, so it is read with an
unpickler that admits numpy arrays, dtypes, scalars and plain containers, and nothing else.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nonlocalnet.atomic import atomic_write
from nonlocalnet.errors import InvalidTypeError, InvalidValueError, NonLocalNetError, check_module
from nonlocalnet.models.insert import NONLOCAL_ATTR
from nonlocalnet.models.released import check_bn_form, check_model_matches, released_checkpoint_info
from nonlocalnet.models.resnet3d import VideoResNet
from nonlocalnet.models.video_models import build_video_model
from nonlocalnet.models.weights import save_weights

__all__ = [
    "Caffe2LoadReport",
    "UnsafePickleError",
    "caffe2_norm",
    "caffe2_to_torch_name",
    "convert_caffe2_checkpoint",
    "export_caffe2_blobs",
    "load_caffe2_checkpoint",
    "read_caffe2_pickle",
    "save_caffe2_pickle",
    "torch_to_caffe2_name",
]

_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): (_NUMPY_CORE + ".multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (_NUMPY_CORE + ".multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): (_NUMPY_CORE + ".multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): (_NUMPY_CORE + ".multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): no side effect
    ("_codecs", "encode"): ("_codecs", "encode"),
}
_AUX_BLOBS = re.compile(r"(^|_)(lr|iter|model_iter|lr_x|epoch)$|_momentum$|_grad$")


class UnsafePickleError(NonLocalNetError, pickle.UnpicklingError):
    """The pickle asks for something other than arrays, scalars and containers."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: a checkpoint may only hold numpy arrays, "
                "scalars and containers (a pickle can execute code)"
            )
        return super().find_class(*target)


def read_caffe2_pickle(path: str | os.PathLike | bytes) -> dict[str, np.ndarray]:
    """Read a Caffe2 ``.pkl`` (path or raw bytes) safely; returns ``{blob name: array}``."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or not a pickle at all
        raise InvalidValueError(
            f"cannot read Caffe2 checkpoint {path if not isinstance(path, bytes) else '<bytes>'}: {err}"
        ) from err
    if isinstance(obj, Mapping) and "blobs" in obj and isinstance(obj["blobs"], Mapping):
        obj = obj["blobs"]
    if not isinstance(obj, Mapping):
        raise InvalidValueError(f"expected a dict of blobs (or {{'blobs': dict}}), got {type(obj).__name__}")
    blobs = {}
    for k, v in obj.items():
        key = k.decode("latin1") if isinstance(k, bytes) else str(k)
        blobs[key] = np.asarray(v)
    return blobs


def _bimap(ours: str, theirs: str) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """A name field spelled ``ours[i]`` in our keys and ``theirs[i]`` in Caffe2 blob names."""
    a, b = ours.split("|"), theirs.split("|")
    return ours, theirs, dict(zip(a, b, strict=True)), dict(zip(b, a, strict=True))


class _Offset(dict):
    """Our ``layer1..4`` are the released ``res2..5``."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset

    def __missing__(self, key: str) -> str:
        return str(int(key) + self.offset)


# Each field: (our regex, Caffe2 regex, ours -> Caffe2, Caffe2 -> ours).
_FIELDS = {
    "stage": (r"\d", r"\d", _Offset(1), _Offset(-1)),
    "i": (r"\d+", r"\d+", _Offset(0), _Offset(0)),
    "k": _bimap("1|2|3", "a|b|c"),
    "bn": _bimap("weight|bias|running_mean|running_var", "s|b|rm|riv"),
    "wb": _bimap("weight|bias", "w|b"),
    "op": _bimap("theta|phi|g|out|concat_project", "theta|phi|g|out|concat_project"),
}
# One table for both directions: (our key, released blob name).
_RULES = (
    ("conv1.weight", "conv1_w"),
    ("bn1.{bn}", "res_conv1_bn_{bn}"),
    ("fc.{wb}", "pred_{wb}"),
    ("layer{stage}.{i}.conv{k}.weight", "res{stage}_{i}_branch2{k}_w"),
    ("layer{stage}.{i}.bn{k}.{bn}", "res{stage}_{i}_branch2{k}_bn_{bn}"),
    ("layer{stage}.{i}.downsample.0.weight", "res{stage}_{i}_branch1_w"),
    ("layer{stage}.{i}.downsample.1.{bn}", "res{stage}_{i}_branch1_bn_{bn}"),
    ("layer{stage}.{i}." + NONLOCAL_ATTR + ".{op}.{wb}", "nonlocal_conv{stage}_{i}_{op}_{wb}"),
    ("layer{stage}.{i}." + NONLOCAL_ATTR + ".norm.{bn}", "nonlocal_conv{stage}_{i}_bn_{bn}"),
)


def _compile(template: str, side: int) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(re.escape(p) if j % 2 == 0 else f"(?P<{p}>{_FIELDS[p][side]})" for j, p in enumerate(parts))
    )


_COMPILED = tuple((_compile(ours, 0), _compile(theirs, 1), ours, theirs) for ours, theirs in _RULES)


def _translate(name: str, to_caffe2: bool) -> str:
    for ours_re, theirs_re, ours, theirs in _COMPILED:
        m = (ours_re if to_caffe2 else theirs_re).fullmatch(name)
        if m:
            fields = {k: (_FIELDS[k][2] if to_caffe2 else _FIELDS[k][3])[v] for k, v in m.groupdict().items()}
            return (theirs if to_caffe2 else ours).format(**fields)
    raise KeyError(name)


def torch_to_caffe2_name(key: str) -> str | None:
    """Our state-dict key -> the released blob name (``None`` for ``num_batches_tracked``)."""
    return None if key.endswith("num_batches_tracked") else _translate(key, to_caffe2=True)


def caffe2_to_torch_name(name: str) -> str | None:
    """The released blob name -> our state-dict key (``None`` for optimiser/solver blobs)."""
    return None if _AUX_BLOBS.search(name) else _translate(name, to_caffe2=False)


@dataclass
class Caffe2LoadReport:
    """What a load did: every problem is listed, nothing is dropped silently."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file blobs with no model key
    mismatched: list[str] = field(default_factory=list)  # "name: file shape vs model shape"
    ignored: list[str] = field(default_factory=list)  # solver blobs (lr, iter, *_momentum)
    defaulted: list[str] = field(default_factory=list)  # BN statistics absent from affine files

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} solver blobs"]
        for label, items in (
            ("missing from the file", self.missing),
            ("in the file but not in the model", self.unexpected),
            ("shape mismatches", self.mismatched),
            ("BN statistics set to mean 0 / var 1 (affine-only file)", self.defaulted),
        ):
            if items:
                lines.append(f"{len(items)} {label}: " + ", ".join(items))
        return "\n".join(lines)


def caffe2_norm(blobs: Mapping[str, np.ndarray]) -> str:
    """The BN form of a checkpoint's blobs: ``"affine"`` when its BN layers hold a scale and a
    shift only (``_bn_s``/``_bn_b``: the frozen-BN releases), else ``"batchnorm"``."""
    scales = any(name.endswith("_bn_s") for name in blobs)
    statistics = any(name.endswith(("_bn_rm", "_bn_riv")) for name in blobs)
    return "affine" if scales and not statistics else "batchnorm"


def _norm_hint(model: nn.Module, blobs: Mapping[str, np.ndarray], report: Caffe2LoadReport) -> str:
    """The fix when a load failed because the file's BN form is not the model's."""
    file_norm = caffe2_norm(blobs)
    model_norm = getattr(model, "backbone_norm", None)
    stats = ("_bn_rm", "_bn_riv")
    if file_norm == "affine" and any(name.endswith(stats) for name in report.missing):
        return (
            "\nthe file holds no BN statistics, only affine scale and shift (a frozen-BN release): build "
            "the model with backbone_norm='affine' (nonlocalnet convert-caffe2 --norm affine; "
            "model.backbone_norm: affine in a config)"
        )
    if model_norm == "affine" and any(name.endswith(stats) for name in report.unexpected):
        return (
            "\nthe file holds BN statistics, the model is frozen-BN: build the model with "
            "backbone_norm='batchnorm' (nonlocalnet convert-caffe2 --norm batchnorm; model.backbone_norm: "
            "batchnorm in a config)"
        )
    return ""


def _fits(array: np.ndarray, target: torch.Tensor) -> bool:
    """Same shape, or the same up to trailing singleton dims (e.g. a 5-D ``pred_w``)."""
    if tuple(array.shape) == tuple(target.shape):
        return True
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    return array.size == target.numel() and squeeze(array.shape) == squeeze(target.shape)


def _affine_only_layer(key: str, loaded: Mapping[str, torch.Tensor], from_file: set[str]) -> bool:
    """``key`` is a BN statistic of a layer whose scale and shift were loaded from the file and
    whose statistics are both absent from it (an affine-only layer): it may get defaults."""
    if not key.endswith(("running_mean", "running_var")):
        return False
    layer = key.rsplit(".", 1)[0]
    return (
        f"{layer}.weight" in loaded
        and f"{layer}.bias" in loaded
        and f"{layer}.running_mean" not in from_file
        and f"{layer}.running_var" not in from_file
    )


def load_caffe2_checkpoint(
    model: nn.Module,
    path: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    strict: bool = True,
) -> Caffe2LoadReport:
    """Load released Caffe2 weights (a ``.pkl`` path or ``{blob name: array}``) into ``model``
    (e.g. ``build_model(..., variant="released")``).

    Every unmapped, missing and mis-shaped tensor is reported. With ``strict`` (default) any of
    them raises ``ValueError`` and the model is left untouched; ``strict=False`` loads what fits
    and returns the report; every model tensor the file lacks keeps its current value. BN
    statistics absent from affine-only files count as missing under ``strict``; without it a
    layer whose scale and shift were loaded from the file but whose statistics are absent gets
    mean 0, variance 1 (listed in ``defaulted``). Statistics of layers the file does not touch
    are left as they are (listed in ``missing``). A load that fails because the file's BN form is
    not the model's says so and names the fix (``backbone_norm="affine"`` for the frozen-BN releases).

    A path named as one of the authors' files (:data:`RELEASED_CHECKPOINTS`) is first checked,
    before it is read, against a :class:`VideoResNet` ``model``: it must be the network the file
    belongs to (:func:`check_model_matches`), else :class:`ReleasedModelMismatchError` names
    each setting that differs.
    """
    check_module(model, "load_caffe2_checkpoint(model, path)")
    if not isinstance(path, Mapping) and isinstance(model, VideoResNet):
        info = released_checkpoint_info(path)
        if info is not None:
            check_model_matches(model, info)
    blobs = path if isinstance(path, Mapping) else read_caffe2_pickle(path)
    state = model.state_dict()
    report = Caffe2LoadReport()
    new, seen = _match_blobs(blobs, state, report)
    from_file = set(new) | seen
    for key in state:
        if key in from_file or key.endswith("num_batches_tracked"):
            continue
        c2 = torch_to_caffe2_name(key) or key
        if not strict and _affine_only_layer(key, new, from_file):
            new[key] = torch.zeros_like(state[key]) if key.endswith("mean") else torch.ones_like(state[key])
            report.defaulted.append(c2)
        else:
            report.missing.append(c2)
    if strict and not report.ok:
        raise InvalidValueError(
            "Caffe2 checkpoint does not match the model; nothing was loaded.\n"
            + report.summary()
            + _norm_hint(model, blobs, report)
        )
    with torch.no_grad():
        for key, value in new.items():
            state[key].copy_(value)
    return report


def _match_blobs(
    blobs: Mapping[str, np.ndarray], state: Mapping[str, torch.Tensor], report: Caffe2LoadReport
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The blobs that fit the model as tensors by our key, and the keys whose blob is mis-shaped;
    every other blob is reported (unexpected, ignored or mismatched)."""
    new: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for name, array in blobs.items():
        try:
            key = caffe2_to_torch_name(name)
        except KeyError:
            report.unexpected.append(name)
            continue
        if key is None:
            report.ignored.append(name)
        elif key not in state:
            report.unexpected.append(name)
        elif not _fits(array, state[key]):
            seen.add(key)
            report.mismatched.append(f"{name}: file {tuple(array.shape)} vs model {tuple(state[key].shape)}")
        else:
            new[key] = (
                torch.from_numpy(np.ascontiguousarray(array)).reshape(state[key].shape).to(state[key].dtype)
            )
            report.loaded.append(name)
    return new, seen


def convert_caffe2_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | None = None,
    backbone_norm: str | None = None,
    num_classes: int = 400,
    strict: bool = True,
    keys: Mapping[str, str] | None = None,
) -> tuple[Caffe2LoadReport, dict[str, str]]:
    """Convert a released ``.pkl`` into our safetensors file ``output`` for the registry
    ``model`` (``variant="released"``); returns the load report and the metadata written
    (``model``, ``variant: released``, ``backbone_norm``, ``source_file``, and for the authors'
    files ``frames`` and ``sample_rate``), which every loader reads back and checks.

    For one of the authors' files (:data:`RELEASED_CHECKPOINTS`, by name) ``model`` and
    ``backbone_norm`` default to the table's, and a ``model`` or ``backbone_norm`` that
    contradicts it is an error before the file is read. Otherwise ``model`` is required and
    ``backbone_norm`` defaults to the file's own BN form (:func:`caffe2_norm`: ``"affine"`` for
    frozen-BN files, which have no BN statistics); one the file contradicts is an error unless
    ``strict`` is off. ``keys``: how the caller spells ``model`` and ``backbone_norm`` in
    messages (e.g. ``{"name": "--model", "backbone_norm": "--norm"}``)."""
    path = Path(path)
    norm = backbone_norm
    keys = {"name": "model", "backbone_norm": "backbone_norm", **(keys or {})}
    info = released_checkpoint_info(path)
    name = model or (info.model if info is not None else None)
    if name is None:
        raise InvalidValueError(
            f"{path.name} is not one of the authors' released files (their names are in "
            f"RELEASED_CHECKPOINTS): name the registry model it belongs to ({keys['name']})"
        )
    if info is not None:
        with torch.device("meta"):  # the shape of the network only: checked before reading the file
            probe = build_video_model(
                name, num_classes, variant="released", backbone_norm=norm or info.backbone_norm
            )
        check_model_matches(probe, info, source=path.name, keys=keys)
    blobs = read_caffe2_pickle(path)
    file_norm = caffe2_norm(blobs)
    norm = norm or (info.backbone_norm if info is not None else file_norm)
    net = build_video_model(name, num_classes, variant="released", backbone_norm=norm)
    if strict:
        check_bn_form(net, file_norm, source=path.name, keys=keys)
    report = load_caffe2_checkpoint(net, blobs, strict=strict)
    metadata = {"model": name, "variant": "released", "backbone_norm": norm, "source_file": path.name}
    if info is not None:
        metadata |= {"frames": str(info.frames), "sample_rate": str(info.sample_rate)}
    save_weights(net, output, metadata=metadata)
    return report, metadata


def export_caffe2_blobs(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Our weights under the released blob names (the inverse of :func:`load_caffe2_checkpoint`)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    blobs: dict[str, np.ndarray] = OrderedDict()
    for key, value in state.items():
        name = torch_to_caffe2_name(key)
        if name is not None:
            blobs[name] = value.detach().cpu().numpy().copy()
    return blobs


def save_caffe2_pickle(blobs: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write ``{'blobs': blobs}`` to ``path`` as a protocol-2 pickle (as the released files are),
    atomically."""
    if not isinstance(blobs, Mapping):
        raise InvalidTypeError(
            f"save_caffe2_pickle(blobs, path): blobs must be a mapping of blob names to arrays, "
            f"got {type(blobs).__name__}"
        )

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump({"blobs": dict(blobs)}, f, protocol=2)

    atomic_write(path, write)
