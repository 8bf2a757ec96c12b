"""Initialise a video ResNet from a 2D ImageNet ResNet by inflating its kernels over time."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from nonlocalnet.errors import InvalidValueError, check_module
from nonlocalnet.models.caffe2 import caffe2_to_torch_name
from nonlocalnet.models.insert import NONLOCAL_ATTR

__all__ = ["InflationReport", "inflate_2d_to_3d", "inflate_kernel"]

_CAFFE2_2D = re.compile(r"^(conv1_w|res_conv1_bn_|res\d_\d+_branch|pred_[wb]$)")


def inflate_kernel(weight_2d: Tensor, frames: int) -> Tensor:
    """``(O, I, kh, kw) -> (O, I, frames, kh, kw)``: repeat over time and divide by ``frames``,
    so a static input gives the 2D response."""
    if weight_2d.dim() != 4:
        raise InvalidValueError(
            f"expected a 2D conv kernel (O, I, kh, kw), got shape {tuple(weight_2d.shape)}"
        )
    return weight_2d.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames


@dataclass
class InflationReport:
    """What :func:`inflate_2d_to_3d` did with every tensor."""

    copied: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)  # 2D kernels spread over T > 1 frames
    kept: list[str] = field(default_factory=list)  # model tensors left at their init
    skipped: list[str] = field(default_factory=list)  # 2D tensors not used (reason given)
    defaulted: list[str] = field(default_factory=list)  # BN statistics absent (affine-only 2D)
    folded: list[str] = field(default_factory=list)  # 2D BN layers folded into an affine layer

    def summary(self) -> str:
        parts = [f"copied {len(self.copied)}, inflated {len(self.inflated)}"]
        if self.kept:
            parts.append(f"kept at init {len(self.kept)} (non-local blocks, classifier)")
        parts += [f"skipped: {s}" for s in self.skipped]
        if self.defaulted:
            parts.append(f"{len(self.defaulted)} BN statistics set to mean 0 / var 1")
        if self.folded:
            parts.append(f"{len(self.folded)} BN layers folded into affine scale and shift")
        return "; ".join(parts)


def _to_torch_names(state_2d: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
    caffe2 = any(_CAFFE2_2D.match(k) for k in state_2d)
    out = {}
    for key, value in state_2d.items():
        tensor = torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
        if caffe2:
            try:
                name = caffe2_to_torch_name(key)
            except KeyError:
                name = key  # reported as unexpected below
            if name is None:
                continue
            key = name
        out[key] = tensor.detach()
    return out


def _fold_statistics(
    source: dict[str, Tensor], target: Mapping[str, Tensor], eps: float, report: InflationReport
) -> list[str]:
    """Fold 2D BN statistics into scale and shift, in ``source``, for every layer that is affine in
    the model (weight and bias, no statistics): ``s = w / sqrt(var + eps)``, ``b' = b - mean * s``,
    in float64. Returns the problems found (half the statistics, mis-shaped tensors)."""
    problems = []
    layers = sorted({k.rsplit(".", 1)[0] for k in source if k.endswith(("running_mean", "running_var"))})
    for layer in layers:
        if f"{layer}.running_mean" in target or f"{layer}.running_var" in target:
            continue  # a BatchNorm layer in the model: statistics are copied as they are
        if f"{layer}.weight" not in target or f"{layer}.bias" not in target:
            continue  # no such layer in the model: reported as unexpected
        names = [f"{layer}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        if any(n not in source for n in names[:2]):
            continue  # the weight or bias is reported as missing
        mean, var = source.get(names[2]), source.get(names[3])
        if mean is None or var is None:
            have, lack = ("running_mean", "running_var") if var is None else ("running_var", "running_mean")
            problems.append(f"{layer}.{have} without {lack} (cannot fold into the affine layer)")
            source.pop(f"{layer}.{have}")
            continue
        w, b = source[names[0]], source[names[1]]
        if not (w.dim() == 1 and w.shape == b.shape == mean.shape == var.shape):
            shapes = ", ".join(f"{n.rsplit('.', 1)[1]} {tuple(source[n].shape)}" for n in names)
            problems.append(f"{layer}: cannot fold BN statistics, expected equal 1-D shapes, got {shapes}")
            continue
        scale = w.double() / torch.sqrt(var.double() + eps)
        source[names[0]] = scale
        source[names[1]] = b.double() - mean.double() * scale
        for n in [*names[2:], f"{layer}.num_batches_tracked"]:
            source.pop(n, None)
        report.folded.append(layer)
    return problems


def inflate_2d_to_3d(
    model: nn.Module, state_dict_2d: Mapping[str, Tensor | np.ndarray], *, bn_eps: float = 1e-5
) -> InflationReport:
    """Load a 2D ResNet's weights into a C2D/I3D ``model`` (from :func:`build_model`), in place.

    ``state_dict_2d`` is in torchvision's key format (``layer1.0.conv1.weight``) or the authors'
    Caffe2 2D format (``res2_0_branch2a_w``, ``_bn_s``/``_bn_riv``...). A 2D kernel ``(O, I, k, k)``
    becomes ``(O, I, T, k, k)`` repeated over ``T`` and divided by ``T``. Non-local blocks keep
    their identity initialisation; the classifier is copied only if its shape matches (an
    ImageNet head has 1000 classes). Any backbone tensor missing or mis-shaped raises
    ``ValueError`` before anything is changed.

    Into a ``backbone_norm="affine"`` model, 2D BatchNorm layers are folded (``bn_eps``: the 2D network's
    BN epsilon, torchvision's and Caffe2's 1e-5), so the affine model computes what the BN model
    does in eval mode; listed in ``folded``. Into a BatchNorm model, an affine-only 2D layer gets
    mean 0 / variance 1 (``defaulted``); a layer with only one of its two statistics is an error.
    """
    check_module(model, "inflate_2d_to_3d(model, state_dict_2d)")
    if not (isinstance(bn_eps, (int, float)) and not isinstance(bn_eps, bool) and 0 <= bn_eps < float("inf")):
        raise InvalidValueError(f"bn_eps must be a finite float >= 0, got {bn_eps!r}")
    source = _to_torch_names(state_dict_2d)
    target = model.state_dict()
    report = InflationReport()
    problems = _fold_statistics(source, target, float(bn_eps), report)
    new = _inflated(source, target, report, problems)
    unexpected = sorted(set(source) - set(target))
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        raise InvalidValueError(
            f"2D weights do not fit {type(model).__name__} ({len(problems)} problems; nothing loaded): "
            + "; ".join(problems[:20])
        )
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value)
    return report


def _inflated(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], report: InflationReport, problems: list[str]
) -> dict[str, Tensor]:
    """Each ``target`` tensor from ``source``: inflated, copied or defaulted (recorded in
    ``report``); what does not fit is appended to ``problems``."""
    new: dict[str, Tensor] = {}
    for key, value in target.items():
        optional = f".{NONLOCAL_ATTR}." in key or key.startswith("fc.")
        if key not in source:
            layer = key.rsplit(".", 1)[0]
            if (
                key.endswith(("running_mean", "running_var"))
                and layer + ".weight" in source
                and layer + ".running_mean" not in source
                and layer + ".running_var" not in source
            ):
                new[key] = torch.zeros_like(value) if key.endswith("mean") else torch.ones_like(value)
                report.defaulted.append(key)
            elif key.endswith("num_batches_tracked") or optional:
                report.kept.append(key)
            else:
                problems.append(f"missing {key}")
            continue
        src = source[key]
        if src.dim() == 4 and value.dim() == 5 and src.shape == value.shape[:2] + value.shape[3:]:
            new[key] = inflate_kernel(src.to(value.dtype), value.shape[2])
            (report.inflated if value.shape[2] > 1 else report.copied).append(key)
        elif src.shape == value.shape:
            new[key] = src.to(value.dtype)
            report.copied.append(key)
        elif optional:
            report.skipped.append(f"{key} (2D {tuple(src.shape)} vs model {tuple(value.shape)})")
            report.kept.append(key)
        else:
            problems.append(f"{key}: 2D {tuple(src.shape)} vs model {tuple(value.shape)}")
    return new
