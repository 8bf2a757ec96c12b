"""``NonLocalOptions``: every choice of a :class:`~nonlocalnet.layers.NonLocalBlock` but its
channels and dimensionality, as one frozen value, checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers.norm import check_norm
from nonlocalnet.ops import check_algorithm

__all__ = ["ATTEND", "INITS", "PROJECTIONS", "NonLocalOptions"]

PROJECTIONS = ("conv", "gemm")
"""How the block computes its 1x1 convs theta, phi, g and ``W_z`` (``projection``)."""
ATTEND = ("spacetime", "space", "time")
"""Which keys a 3D block's queries see (``attend``): all, their own frame, their own position."""
INITS = ("msra", "normal")
"""The 1x1 convs' initialisation (``init``): the paper's He-normal or the released code's normal."""

_DIMS = (1, 2, 3)
_DEFAULT_POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}


def _one_of(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise InvalidValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def _is_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class NonLocalOptions:
    """The non-local block's choices (the paper, Wang et al., CVPR 2018, section 3; and the
    authors' released code, facebookresearch/video-nonlocal-net).

    Args:
        mode: ``"gaussian"`` (no theta/phi: raw features), ``"embedded_gaussian"``,
            ``"dot_product"`` or ``"concatenation"``.
        sub_sample: max-pool phi and g (never theta) with ``pool_kernel`` (stride = kernel).
        pool_kernel: an int or one int per dimension; default ``(1, 2, 2)`` in 3D, ``(2, 2)``
            in 2D, ``2`` in 1D.
        pool_before_conv: pool ``x`` once before the phi/g convs (released code) instead of
            pooling their outputs (the paper and most ports). Different outputs, same weights.
        use_scale: multiply the pairwise logits by ``Ck ** -0.5``, ``Ck`` being the width of the
            dot product (``inter_channels``; ``in_channels`` for ``"gaussian"``). ``True`` scales
            in every mode; ``"softmax"`` only in the softmax modes (Gaussian, embedded Gaussian),
            as the released code does (:meth:`released`).
        norm: the norm after ``W_z``: ``"batchnorm"`` with gamma initialised to 0, ``"affine"``
            (frozen-BN scale and shift) with scale 0, ``"groupnorm"`` (up to 32 groups:
            per-sample statistics, for 1-2 images per batch) with gamma 0, or ``"none"`` with
            ``W_z`` initialised to 0 (the released frozen-BN models). Either way the block is
            the identity at initialisation.
        init: ``"msra"`` (paper, He-normal, fan-out) or ``"normal"`` (released code, std
            ``init_std``) for the 1x1 convs; biases start at 0.
        temporal_group: in 3D, attend only within groups of this many consecutive frames
            (the released code's memory saver for res3); ``None`` attends over all frames.
        attend: in 3D, which keys a query sees (the paper's Table 2d): ``"spacetime"`` (all),
            ``"space"`` (its own frame only; needs no temporal subsampling) or ``"time"`` (its
            own spatial position in every frame: with spatial subsampling, the key cell that
            pools it, so H and W must be multiples of the pool kernel). Exact and linear in
            memory: each is the same operation on regrouped sequences, never a masked ``N x N``.
        bias: bias on the 1x1 convs theta, phi, g and ``W_z``.
        bn_eps: eps of the output norm (BatchNorm, GroupNorm).
        algorithm: forwarded to :mod:`nonlocalnet.ops`; ``"auto"`` is exact and never builds
            the ``N x N`` affinity. The quadratic forms exist for comparison.
        projection: ``"conv"`` calls the conv modules ``theta``, ``phi``, ``g`` and ``out``;
            ``"gemm"`` computes the same convs from their weights as batched matrix products on
            a ``(B, N, C)`` view of the input (:mod:`~nonlocalnet.layers.pointwise`): 1.3-1.5x
            faster forward + backward on CPU at the video models' block shapes, the same outputs
            up to float rounding, but hooks on those submodules do not run.
    """

    mode: str = "embedded_gaussian"
    sub_sample: bool = True
    pool_kernel: int | tuple[int, ...] | None = None
    pool_before_conv: bool = False
    use_scale: bool | Literal["softmax"] = False
    norm: str = "batchnorm"
    init: str = "msra"
    init_std: float = 0.01
    temporal_group: int | None = None
    attend: str = "spacetime"
    bias: bool = True
    bn_eps: float = 1e-5
    algorithm: str = "auto"
    projection: str = "conv"

    def __post_init__(self) -> None:
        check_algorithm(self.mode, self.algorithm)
        check_norm(self.norm)
        _one_of(self.init, INITS, "init")
        _one_of(self.projection, PROJECTIONS, "projection")
        _one_of(self.attend, ATTEND, "attend")
        for name in ("sub_sample", "pool_before_conv", "bias"):
            _is_bool(getattr(self, name), name)
        if not (isinstance(self.use_scale, bool) or self.use_scale == "softmax"):
            raise InvalidValueError(f"use_scale must be True, False or 'softmax', got {self.use_scale!r}")
        if self.temporal_group is not None and not _positive_int(self.temporal_group):
            raise InvalidValueError(f"temporal_group must be a positive int, got {self.temporal_group!r}")
        if self.attend != "spacetime" and self.temporal_group is not None:
            raise InvalidValueError(f"attend={self.attend!r} and temporal_group cannot be combined")
        kernel = self.pool_kernel
        if kernel is not None and not isinstance(kernel, int):  # a list from a config: a tuple
            object.__setattr__(self, "pool_kernel", tuple(kernel))
        for name, zero_ok in (("init_std", False), ("bn_eps", True)):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and (value >= 0 if zero_ok else value > 0) and value < float("inf")):
                bound = ">= 0" if zero_ok else "> 0"
                raise InvalidValueError(f"{name} must be a finite number {bound}, got {value!r}")

    def validate(self, dim: int) -> tuple[int, ...] | None:
        """Check the options for a ``dim``-D block; return its pool kernel (``None`` without
        ``sub_sample``)."""
        if dim not in _DIMS:
            raise InvalidValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        if self.temporal_group is not None and dim != 3:
            raise InvalidValueError(f"temporal_group needs dim=3 (B, C, T, H, W), got dim={dim}")
        if self.attend != "spacetime" and dim != 3:
            raise InvalidValueError(f"attend={self.attend!r} needs dim=3 (B, C, T, H, W), got dim={dim}")
        if not self.sub_sample:
            return None
        value = _DEFAULT_POOL[dim] if self.pool_kernel is None else self.pool_kernel
        kernel = (value,) * dim if isinstance(value, int) else tuple(value)
        if len(kernel) != dim or not all(_positive_int(k) for k in kernel):
            raise InvalidValueError(
                f"pool_kernel must be a positive int or {dim} positive ints, got {value!r}"
            )
        return kernel

    def replace(self, **overrides: Any) -> NonLocalOptions:
        """A copy with ``overrides`` (field names) changed; an unknown name is an error naming
        the fields."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def paper(cls, **overrides: Any) -> NonLocalOptions:
        """The paper's block: pool after the phi/g convs, no logit scale, MSRA init."""
        return cls().replace(**{"pool_before_conv": False, "use_scale": False, "init": "msra", **overrides})

    @classmethod
    def released(cls, **overrides: Any) -> NonLocalOptions:
        """The authors' released code: pool before the phi/g convs, logits of the softmax modes
        scaled, std 0.01 normal init. Load released weights with these options."""
        return cls().replace(
            **{
                "pool_before_conv": True,
                "use_scale": "softmax",
                "init": "normal",
                "init_std": 0.01,
                **overrides,
            }
        )

    @classmethod
    def coerce(
        cls,
        value: NonLocalOptions | Mapping[str, Any] | None,
        base: NonLocalOptions | None = None,
        *,
        name: str = "nonlocal_options",
    ) -> NonLocalOptions:
        """``value`` as options: itself if it is a :class:`NonLocalOptions`; a mapping of field
        names overrides ``base`` (default :class:`NonLocalOptions()`); ``None`` is ``base``.
        ``name``: the argument, for the error of another type."""
        base = cls() if base is None else base
        if value is None:
            return base
        if isinstance(value, NonLocalOptions):
            return value
        if not isinstance(value, Mapping):
            raise InvalidTypeError(
                f"{name} must be a NonLocalOptions or a mapping of its fields, got {type(value).__name__}"
            )
        return base.replace(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data (a config section)."""
        out = dataclasses.asdict(self)
        if isinstance(out["pool_kernel"], tuple):
            out["pool_kernel"] = list(out["pool_kernel"])
        return out


FIELDS = tuple(f.name for f in dataclasses.fields(NonLocalOptions))
"""The names of :class:`NonLocalOptions`' fields: the keys an options mapping may hold."""


def _check_fields(options: Mapping[str, Any]) -> None:
    bad = sorted(set(options) - set(FIELDS))
    if bad:
        raise InvalidValueError(f"unknown non-local block option(s) {bad}; valid: {list(FIELDS)}")
