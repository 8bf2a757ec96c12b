"""The normalisation layers by name, one definition for the whole package (like timm's
``create_norm``): the non-local block's output norm and the video backbone's norms."""

from __future__ import annotations

from torch import nn

from nonlocalnet.errors import InvalidValueError
from nonlocalnet.layers.affine import AffineChannel

__all__ = ["BATCHNORMS", "GROUPNORM_MAX_GROUPS", "NORMS", "check_norm", "create_norm", "groupnorm_groups"]

NORMS = ("batchnorm", "affine", "none", "groupnorm")
"""``"batchnorm"`` (BatchNorm of the input's dimensionality), ``"affine"`` (:class:`AffineChannel`,
frozen BN), ``"none"`` (identity) or ``"groupnorm"`` (GroupNorm, :func:`groupnorm_groups`
groups: per-sample statistics, for detectors trained with 1-2 images per batch)."""

GROUPNORM_MAX_GROUPS = 32
"""The number of groups of ``"groupnorm"`` (Wu & He 2018), when it divides the channels."""

BATCHNORMS: dict[int, type[nn.modules.batchnorm._BatchNorm]] = {
    1: nn.BatchNorm1d,
    2: nn.BatchNorm2d,
    3: nn.BatchNorm3d,
}
"""The BatchNorm class of each dimensionality (1, 2, 3)."""


def check_norm(kind: str, allowed: tuple[str, ...] = NORMS, *, name: str = "norm") -> str:
    """Return ``kind`` if it is one of ``allowed``; else raise ``ValueError`` naming them."""
    if not isinstance(kind, str) or kind not in allowed:
        raise InvalidValueError(f"unknown {name} {kind!r}; expected one of {allowed}")
    return kind


def groupnorm_groups(num_features: int, max_groups: int = GROUPNORM_MAX_GROUPS) -> int:
    """The groups of ``"groupnorm"`` over ``num_features`` channels: the largest divisor of
    ``num_features`` that is at most ``max_groups`` (32 for 64 channels, 24 for 72, 1 for 7)."""
    return max(g for g in range(1, min(max_groups, num_features) + 1) if num_features % g == 0)


def create_norm(
    kind: str, num_features: int, dim: int, *, eps: float = 1e-5, momentum: float = 0.1
) -> nn.Module:
    """The norm layer ``kind`` (one of :data:`NORMS`) over ``num_features`` channels of a
    ``dim``-D input ``(B, C, *S)``; ``eps`` goes to BatchNorm and GroupNorm, ``momentum`` to
    BatchNorm."""
    check_norm(kind)
    if kind == "groupnorm":
        return nn.GroupNorm(groupnorm_groups(num_features), num_features, eps=eps)
    if kind == "batchnorm":
        if dim not in BATCHNORMS:
            raise InvalidValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        return BATCHNORMS[dim](num_features, eps=eps, momentum=momentum)
    return AffineChannel(num_features) if kind == "affine" else nn.Identity()
