"""Initialise a video ResNet from a 2D ImageNet ResNet by inflating its kernels over time."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from nonlocalnet.models.caffe2 import caffe2_to_torch_name

__all__ = ["InflationReport", "inflate_2d_to_3d", "inflate_kernel"]

_CAFFE2_2D = re.compile(r"^(conv1_w|res_conv1_bn_|res\d_\d+_branch|pred_[wb]$)")


def inflate_kernel(weight_2d: Tensor, frames: int) -> Tensor:
    """``(O, I, kh, kw) -> (O, I, frames, kh, kw)``: repeat over time and divide by ``frames``,
    so a static input gives the 2D response."""
    if weight_2d.dim() != 4:
        raise ValueError(f"expected a 2D conv kernel (O, I, kh, kw), got shape {tuple(weight_2d.shape)}")
    return weight_2d.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames


@dataclass
class InflationReport:
    """What :func:`inflate_2d_to_3d` did with every tensor."""

    copied: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)  # 2D kernels spread over T > 1 frames
    kept: list[str] = field(default_factory=list)  # model tensors left at their init
    skipped: list[str] = field(default_factory=list)  # 2D tensors not used (reason given)
    defaulted: list[str] = field(default_factory=list)  # BN statistics absent (affine-only 2D)

    def summary(self) -> str:
        parts = [f"copied {len(self.copied)}, inflated {len(self.inflated)}"]
        if self.kept:
            parts.append(f"kept at init {len(self.kept)} (non-local blocks, classifier)")
        parts += [f"skipped: {s}" for s in self.skipped]
        if self.defaulted:
            parts.append(f"{len(self.defaulted)} BN statistics set to mean 0 / var 1")
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


def inflate_2d_to_3d(model: nn.Module, state_dict_2d: Mapping[str, Tensor | np.ndarray]) -> InflationReport:
    """Load a 2D ResNet's weights into a C2D/I3D ``model`` (from :func:`build_model`), in place.

    ``state_dict_2d`` is in torchvision's key format (``layer1.0.conv1.weight``) or the authors'
    Caffe2 2D format (``res2_0_branch2a_w``, ``_bn_s``/``_bn_riv``...). A 2D kernel ``(O, I, k, k)``
    becomes ``(O, I, T, k, k)`` repeated over ``T`` and divided by ``T``. Non-local blocks keep
    their identity initialisation; the classifier is copied only if its shape matches (an
    ImageNet head has 1000 classes). Any backbone tensor missing or mis-shaped raises
    ``ValueError`` before anything is changed.
    """
    source = _to_torch_names(state_dict_2d)
    target = model.state_dict()
    report = InflationReport()
    new: dict[str, Tensor] = {}
    problems = []
    for key, value in target.items():
        optional = ".nl." in key or key.startswith("fc.")
        if key not in source:
            if key.endswith(("running_mean", "running_var")) and key.rsplit(".", 1)[0] + ".weight" in source:
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
    unexpected = sorted(set(source) - set(target))
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        raise ValueError(
            f"2D weights do not fit {type(model).__name__} ({len(problems)} problems; nothing loaded): "
            + "; ".join(problems[:20])
        )
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value)
    return report
