"""``NonLocalBlock``: the paper's non-local block for 1D, 2D and 3D inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from nonlocalnet.deprecation import warn_deprecated
from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers.norm import check_norm, create_norm
from nonlocalnet.layers.pointwise import channels_first, pointwise, pointwise_channels_first, to_sequence
from nonlocalnet.ops import LOW_PRECISION, SOFTMAX_MODES, attention_weights, check_algorithm, nonlocal_op

__all__ = ["ATTEND", "BLOCK_PRESETS", "PROJECTIONS", "NonLocalBlock"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DEFAULT_POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
_LAYOUT = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
_INITS = ("msra", "normal")
PROJECTIONS = ("conv", "gemm")
"""How the block computes its 1x1 convs theta, phi, g and ``W_z`` (``projection=``)."""
ATTEND = ("spacetime", "space", "time")
"""Which keys a 3D block's queries see (``attend=``): all, their own frame, their own position."""

BLOCK_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"pool_before_conv": False, "use_scale": False, "init": "msra"},
    "released": {"pool_before_conv": True, "use_scale": "softmax", "init": "normal", "init_std": 0.01},
}
"""Where the paper and the authors' released Caffe2 code differ: pass ``**BLOCK_PRESETS[name]``
or use :meth:`NonLocalBlock.from_preset`. Load released weights with ``"released"`` (it scales
the logits of the softmax modes only, as the released code does)."""


def _resolve_scale(use_scale: bool | str, scale: bool | None) -> bool | str:
    """``use_scale``, or the deprecated ``scale`` given instead of it."""
    if scale is None:
        return use_scale
    warn_deprecated("NonLocalBlock(scale=...)", "use_scale=...", stacklevel=4)
    if use_scale is not False:
        raise InvalidTypeError("NonLocalBlock got both scale= and use_scale=; pass use_scale= only")
    return scale


def _as_tuple(value: int | Sequence[int], dim: int, name: str) -> tuple[int, ...]:
    out = (value,) * dim if isinstance(value, int) else tuple(value)
    if len(out) != dim or not all(isinstance(k, int) and k >= 1 for k in out):
        raise InvalidValueError(f"{name} must be a positive int or {dim} positive ints, got {value!r}")
    return out


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class NonLocalBlock(nn.Module):
    """Non-local block ``z = BN(W_z y) + x`` with ``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``.

    Args:
        in_channels: channels ``C`` of the input.
        inter_channels: bottleneck width ``Ci`` of theta, phi and g (default ``C // 2``).
        mode: ``"gaussian"`` (no theta/phi: raw features), ``"embedded_gaussian"``,
            ``"dot_product"`` or ``"concatenation"``.
        dim: 1, 2 or 3 for ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)`` inputs.
        sub_sample: max-pool phi and g (never theta) with ``pool_kernel`` (stride = kernel).
        pool_kernel: default ``(1, 2, 2)`` in 3D, ``(2, 2)`` in 2D, ``2`` in 1D.
        pool_before_conv: pool ``x`` once before the phi/g convs (released code) instead of
            pooling their outputs (the paper and most ports). Different outputs, same weights.
        use_scale: multiply the pairwise logits by ``Ck ** -0.5``, ``Ck`` being the width of the
            dot product (``inter_channels``; ``in_channels`` for ``"gaussian"``). ``True`` scales
            in every mode; ``"softmax"`` only in the softmax modes (Gaussian, embedded Gaussian),
            as the released code does (``BLOCK_PRESETS["released"]``). The attribute
            ``use_scale`` holds the resolved bool. (``scale=`` is its deprecated old name.)
        norm: ``"batchnorm"`` after ``W_z`` with gamma initialised to 0, ``"affine"`` (frozen-BN
            scale and shift) with scale 0, ``"groupnorm"`` (GroupNorm with up to 32 groups:
            per-sample statistics, for 1-2 images per batch) with gamma 0, or ``"none"`` with
            ``W_z`` initialised to 0 (the released frozen-BN models). Either way the block is
            the identity at initialisation. The name is kept as ``norm_kind``; the layer is the
            submodule ``norm``.
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
        projection: ``"conv"`` calls the conv modules ``theta``, ``phi``, ``g`` and ``out``;
            ``"gemm"`` computes the same convs from their weights as batched matrix products on
            a ``(B, N, C)`` view of the input (:mod:`~nonlocalnet.layers.pointwise`): 1.3-1.5x
            faster forward + backward on CPU at the video models' block shapes, the same outputs
            up to float rounding, but hooks on those submodules do not run.
        algorithm: forwarded to :mod:`nonlocalnet.ops`; ``"auto"`` is exact and never
            builds the ``N x N`` affinity. The quadratic forms exist for comparison.

    Submodules are named ``theta``, ``phi``, ``g``, ``out`` (``W_z``), ``norm`` and, for
    concatenation, ``concat_project`` (``2 Ci -> 1``, no bias), so state dicts map one-to-one
    onto other implementations.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        mode: str = "embedded_gaussian",
        dim: int = 3,
        sub_sample: bool = True,
        pool_kernel: int | Sequence[int] | None = None,
        pool_before_conv: bool = False,
        use_scale: bool | Literal["softmax"] = False,
        norm: str = "batchnorm",
        init: str = "msra",
        init_std: float = 0.01,
        temporal_group: int | None = None,
        attend: str = "spacetime",
        bias: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        algorithm: str = "auto",
        projection: str = "conv",
        scale: bool | None = None,
    ) -> None:
        super().__init__()
        use_scale = _resolve_scale(use_scale, scale)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise InvalidValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if inter_channels is None:
            inter_channels = max(in_channels // 2, 1)
        if isinstance(inter_channels, bool) or not isinstance(inter_channels, int):
            raise InvalidTypeError(f"inter_channels must be an int, got {type(inter_channels).__name__}")
        if inter_channels < 1:
            raise InvalidValueError(f"inter_channels must be >= 1, got {inter_channels}")
        check_algorithm(mode, algorithm)
        if dim not in _CONV:
            raise InvalidValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        check_norm(norm)
        if init not in _INITS:
            raise InvalidValueError(f"unknown init {init!r}; expected one of {_INITS}")
        if not (isinstance(use_scale, bool) or use_scale == "softmax"):
            raise InvalidValueError(f"use_scale must be True, False or 'softmax', got {use_scale!r}")
        if temporal_group is not None:
            if dim != 3:
                raise InvalidValueError(f"temporal_group needs dim=3 (B, C, T, H, W), got dim={dim}")
            if not isinstance(temporal_group, int) or temporal_group < 1:
                raise InvalidValueError(f"temporal_group must be a positive int, got {temporal_group!r}")
        if projection not in PROJECTIONS:
            raise InvalidValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
        if attend not in ATTEND:
            raise InvalidValueError(f"unknown attend {attend!r}; expected one of {ATTEND}")
        if attend != "spacetime" and dim != 3:
            raise InvalidValueError(f"attend={attend!r} needs dim=3 (B, C, T, H, W), got dim={dim}")
        if attend != "spacetime" and temporal_group is not None:
            raise InvalidValueError(f"attend={attend!r} and temporal_group cannot be combined")

        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.mode = mode
        self.dim = dim
        self.pool_kernel: tuple[int, ...] | None = (
            _as_tuple(_DEFAULT_POOL[dim] if pool_kernel is None else pool_kernel, dim, "pool_kernel")
            if sub_sample
            else None
        )
        self.pool_before_conv = pool_before_conv
        self.use_scale = use_scale is True or (use_scale == "softmax" and mode in SOFTMAX_MODES)
        self.norm_kind = norm
        self.init = init
        self.init_std = init_std
        self.temporal_group = temporal_group
        self.attend = attend
        self.algorithm = algorithm
        self.projection = projection

        conv = _CONV[dim]
        embedded = mode != "gaussian"
        self.theta = conv(in_channels, inter_channels, 1, bias=bias) if embedded else None
        self.phi = conv(in_channels, inter_channels, 1, bias=bias) if embedded else None
        self.g = conv(in_channels, inter_channels, 1, bias=bias)
        self.concat_project = conv(2 * inter_channels, 1, 1, bias=False) if mode == "concatenation" else None
        self.pool = _POOL[dim](self.pool_kernel, stride=self.pool_kernel) if sub_sample else None
        self.out = conv(inter_channels, in_channels, 1, bias=bias)
        self.norm = create_norm(norm, in_channels, dim, eps=bn_eps, momentum=bn_momentum)
        self.reset_parameters()

    @classmethod
    def from_preset(cls, preset: str, in_channels: int, **kwargs: Any) -> NonLocalBlock:
        """Build with the choices of ``BLOCK_PRESETS[preset]`` (``"paper"`` or ``"released"``);
        ``kwargs`` override them."""
        if preset not in BLOCK_PRESETS:
            raise InvalidValueError(f"unknown preset {preset!r}; expected one of {tuple(BLOCK_PRESETS)}")
        options = {**BLOCK_PRESETS[preset], **kwargs}
        if "scale" in kwargs and "use_scale" not in kwargs:  # the deprecated name overrides the preset's
            options.pop("use_scale")
        return cls(in_channels, **options)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "norm_type" in state:  # a whole block pickled before the rename
            state["norm_kind"] = state.pop("norm_type")
        state.setdefault("projection", "conv")  # pickled before the option existed
        super().__setstate__(state)

    @property
    def norm_type(self) -> str:
        """Deprecated name of :attr:`norm_kind`."""
        warn_deprecated("NonLocalBlock.norm_type", "norm_kind")
        return self.norm_kind

    @property
    def key_channels(self) -> int:
        """Width ``Ck`` of the dot product theta_i^T phi_j."""
        return self.in_channels if self.mode == "gaussian" else self.inter_channels

    @property
    def logit_scale(self) -> float:
        return self.key_channels**-0.5 if self.use_scale else 1.0

    def reset_parameters(self) -> None:
        """Initialise the convs (``init``) and make the block the identity."""
        for m in (self.theta, self.phi, self.g, self.concat_project, self.out):
            if m is None:
                continue
            if self.init == "msra":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, std=self.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.norm_kind != "none":
            self.norm.reset_parameters()
            nn.init.zeros_(self.norm.weight)
        else:
            nn.init.zeros_(self.out.weight)
            if self.out.bias is not None:
                nn.init.zeros_(self.out.bias)

    # ----------------------------------------------------------------- input checks
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InvalidTypeError(f"expected a torch.Tensor {_LAYOUT[self.dim]}, got {type(x).__name__}")
        if x.dim() != self.dim + 2:
            raise InvalidValueError(
                f"expected a {self.dim + 2}-D input {_LAYOUT[self.dim]} for dim={self.dim}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise InvalidValueError(
                f"expected {self.in_channels} channels (dim 1 of {_LAYOUT[self.dim]}), "
                f"got {x.shape[1]} in shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InvalidTypeError(f"expected a floating-point input, got dtype {x.dtype}")
        param = self.g.weight
        if x.dtype != param.dtype and not _autocast_enabled(x.device.type):
            raise InvalidTypeError(
                f"input dtype {x.dtype} differs from the block's parameters ({param.dtype}): convert "
                f"one to the other (block.to(dtype) or x.to(dtype)) or run under torch.autocast"
            )
        spatial = tuple(x.shape[2:])
        if self.attend == "space" and self.pool_kernel is not None and self.pool_kernel[0] != 1:
            raise InvalidValueError(
                f"attend='space' keeps each frame's keys apart: the temporal pool kernel must be 1, "
                f"got pool_kernel {self.pool_kernel}"
            )
        if self.attend == "time":
            cell = self._cell()
            if spatial[1] % cell[0] or spatial[2] % cell[1]:
                raise InvalidValueError(
                    f"attend='time' with spatial subsampling {cell} needs H and W divisible by it, "
                    f"got {spatial[1]} x {spatial[2]}"
                )
        if self.pool_kernel is not None and any(
            s < k for s, k in zip(spatial, self.pool_kernel, strict=True)
        ):
            raise InvalidValueError(
                f"spatial size {spatial} is smaller than the pool kernel {self.pool_kernel}; "
                "use a smaller pool_kernel or sub_sample=False"
            )
        if self.temporal_group is not None:
            t, kt = spatial[0], self.pool_kernel[0] if self.pool_kernel else 1
            g = self.temporal_group
            if t % g or g % kt:
                raise InvalidValueError(
                    f"temporal_group={g} must divide the {t} input frames and be a multiple of "
                    f"the temporal pool kernel {kt}"
                )

    # ----------------------------------------------------------------- computation
    def _groups(self, x: Tensor) -> int:
        if self.attend == "space":
            return x.shape[2]  # one group per frame
        return x.shape[2] // self.temporal_group if self.temporal_group else 1

    def _cell(self) -> tuple[int, int]:
        """The spatial size of one key cell (the pool kernel's; 1 x 1 without subsampling)."""
        return tuple(self.pool_kernel[1:]) if self.pool_kernel is not None else (1, 1)

    def _time_queries(self, t: Tensor, spatial: Sequence[int]) -> Tensor:
        """``(B, N, C) -> (B * H' * W', T * ph * pw, C)``: the queries of each key cell."""
        b, c = t.shape[0], t.shape[2]
        tt, h, w = spatial
        ph, pw = self._cell()
        t = t.reshape(b, tt, h // ph, ph, w // pw, pw, c).permute(0, 2, 4, 1, 3, 5, 6)
        return t.reshape(b * (h // ph) * (w // pw), tt * ph * pw, c)

    @staticmethod
    def _time_keys(t: Tensor, key_shape: Sequence[int]) -> Tensor:
        """``(B, M, C) -> (B * H' * W', T', C)``: each key cell's frames."""
        b, c = t.shape[0], t.shape[2]
        tt, h, w = key_shape
        return t.reshape(b, tt, h * w, c).transpose(1, 2).reshape(b * h * w, tt, c)

    def _pool_sequence(self, seq: Tensor, spatial: Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
        """Subsample a ``(B, N, C)`` sequence over the grid ``spatial``: ``(B, M, C)`` and the grid."""
        if self.pool is None:
            return seq, tuple(spatial)
        pooled = self.pool(channels_first(seq, spatial))  # channels-last in, channels-last out
        return to_sequence(pooled), tuple(pooled.shape[2:])

    def _projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """theta ``(B, N, Ck)``, phi ``(B, M, Ck)`` and g ``(B, M, Ci)`` as position sequences
        (views, row-major in the channels), and the key grid ``S'`` (after subsampling).

        With ``projection="gemm"`` the 1x1 convs run as batched GEMMs from their weights
        (:mod:`~nonlocalnet.layers.pointwise`), phi and g as one."""
        if self.projection == "conv":
            return self._conv_projections(x)
        xs = to_sequence(x)
        # theta apart from phi and g: as a slice of one product it would be copied for the
        # attention kernels anyway, and would keep the whole product alive for the backward
        theta = xs if self.theta is None else pointwise(xs, [self.theta])
        key_convs = [self.g] if self.phi is None else [self.phi, self.g]
        if self.pool is not None and self.pool_before_conv:
            xp = self.pool(x)
            key_shape = tuple(xp.shape[2:])
            kv = pointwise(to_sequence(xp), key_convs)
        else:
            kv, key_shape = self._pool_sequence(pointwise(xs, key_convs), tuple(x.shape[2:]))
        if self.phi is None:  # Gaussian: raw features as keys, subsampled like g
            phi = xs if self.pool is None else to_sequence(xp if self.pool_before_conv else self.pool(x))
            return theta, phi, kv, key_shape
        phi, g = kv.split(self.inter_channels, dim=2)
        return theta, phi, g, key_shape

    def _conv_projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """:meth:`_projections` by calling the conv modules on channel-first maps."""
        pool = self.pool if self.pool is not None else nn.Identity()
        theta = x if self.theta is None else self.theta(x)
        if self.pool_before_conv or self.phi is None:
            xp = pool(x)
            phi = xp if self.phi is None else self.phi(xp)
            g = self.g(xp) if self.pool_before_conv else pool(self.g(x))
        else:
            phi, g = pool(self.phi(x)), pool(self.g(x))
        return to_sequence(theta), to_sequence(phi), to_sequence(g), tuple(phi.shape[2:])

    def _concat_weight(self) -> Tensor | None:
        return None if self.concat_project is None else self.concat_project.weight.reshape(-1)

    def nonlocal_response(self, x: Tensor) -> Tensor:
        """``y`` before ``W_z``: shape ``(B, Ci, *S)``."""
        self._check_input(x)
        return channels_first(self._response(x), x.shape[2:])

    def _response(self, x: Tensor) -> Tensor:
        """``y`` as a sequence ``(B, N, Ci)``."""
        theta, phi, g, key_shape = self._projections(x)
        kw = {"scale": self.logit_scale, "weight": self._concat_weight(), "algorithm": self.algorithm}
        b, spatial = x.shape[0], tuple(x.shape[2:])
        if self.attend == "time":
            y = nonlocal_op(
                self.mode,
                self._time_queries(theta, spatial),
                self._time_keys(phi, key_shape),
                self._time_keys(g, key_shape),
                **kw,
            )  # (B * H' * W', T * ph * pw, Ci)
            t, h, w = spatial
            ph, pw = self._cell()
            y = y.reshape(b, h // ph, w // pw, t, ph, pw, self.inter_channels)
            return y.permute(0, 3, 1, 4, 2, 5, 6).reshape(b, -1, self.inter_channels)
        groups = self._groups(x)
        y = nonlocal_op(
            self.mode, *(t.reshape(b * groups, -1, t.shape[2]) for t in (theta, phi, g)), **kw
        )  # (B * groups, N / groups, Ci)
        return y.reshape(b, -1, self.inter_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *S) -> (B, C, *S)``."""
        self._check_input(x)
        if x.shape[0] == 0:
            return x.clone()
        y = self._response(x)
        if self.projection == "conv":
            out = self.out(channels_first(y, x.shape[2:]))
        else:
            out = pointwise_channels_first(y, self.out).reshape(x.shape[0], self.in_channels, *x.shape[2:])
        return x + self.norm(out)

    # ----------------------------------------------------------------- inspection
    def _flat_queries(self, queries: Tensor | Sequence[Sequence[int]], spatial: tuple) -> Tensor:
        n = math.prod(spatial)
        if isinstance(queries, Tensor):
            if queries.dtype in (torch.bool,) or queries.is_floating_point() or queries.dim() != 1:
                raise InvalidTypeError(
                    f"queries must be a 1-D integer tensor of flat positions, got "
                    f"{queries.dtype} of shape {tuple(queries.shape)}"
                )
            flat = queries.long()
        else:
            coords = [tuple(q) for q in queries]
            if any(len(q) != len(spatial) for q in coords):
                raise InvalidValueError(f"each query must have {len(spatial)} coordinates for size {spatial}")
            for q in coords:
                if any(not 0 <= c < s for c, s in zip(q, spatial, strict=True)):
                    raise InvalidValueError(f"query {q} is outside the input of size {spatial}")
            strides = [math.prod(spatial[i + 1 :]) for i in range(len(spatial))]
            flat = torch.tensor(
                [sum(c * s for c, s in zip(q, strides, strict=True)) for q in coords],
                dtype=torch.long,
            )
        if flat.numel() and (flat.min() < 0 or flat.max() >= n):
            raise InvalidValueError(f"query indices must lie in [0, {n}) for size {spatial}")
        return flat

    def attention_map(self, x: Tensor, queries: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Normalised weights ``f(x_i, x_j) / C(x)`` of the chosen query positions ``i``.

        ``queries``: flat indices into ``x``'s positions (1-D integer tensor) or coordinate tuples
        (e.g. ``[(t, h, w), ...]``). Returns ``(B, Q, *S')`` over the key grid ``S'`` (after
        subsampling); with ``temporal_group``, keys outside the query's group get weight 0.
        Costs ``Q x M``, never ``N x M``.
        """
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        flat = self._flat_queries(queries, spatial).to(x.device)
        theta, phi, _, key_shape = self._projections(x)
        theta_q = theta[:, flat]  # (B, Q, Ck)
        groups = self._groups(x)
        kw = {"scale": self.logit_scale, "weight": self._concat_weight()}
        if self.attend == "time":
            return self._time_attention_map(theta_q, phi, key_shape, flat, spatial, kw)
        if groups == 1:
            w = attention_weights(self.mode, theta_q, phi, **kw)
            return w.reshape(x.shape[0], flat.numel(), *key_shape)
        phi_groups = phi.reshape(x.shape[0], groups, -1, phi.shape[2])
        per_group = math.prod(spatial) // groups
        out = theta_q.new_zeros(x.shape[0], flat.numel(), groups, phi_groups.shape[2])
        out = out.float() if out.dtype in LOW_PRECISION else out
        query_group = flat // per_group
        for grp in query_group.unique().tolist():
            sel = (query_group == grp).nonzero().squeeze(1)
            out[:, sel, grp] = attention_weights(self.mode, theta_q[:, sel], phi_groups[:, grp], **kw)
        return out.reshape(x.shape[0], flat.numel(), *key_shape)

    def _time_attention_map(
        self, theta_q: Tensor, phi: Tensor, key_shape: tuple, flat: Tensor, spatial: tuple, kw: dict
    ) -> Tensor:
        """Weights of each query over the frames of its own key cell; 0 elsewhere."""
        tk, hk, wk = key_shape
        b = phi.shape[0]
        ph, pw = self._cell()
        h, w = (flat // spatial[2]) % spatial[1], flat % spatial[2]
        cell = (h // ph) * wk + (w // pw)
        out = theta_q.new_zeros(b, flat.numel(), tk, hk * wk)
        out = out.float() if out.dtype in LOW_PRECISION else out
        keys = phi.reshape(b, tk, hk * wk, phi.shape[2]).transpose(1, 2)  # (B, cells, T', Ck)
        for c in cell.unique().tolist():
            sel = (cell == c).nonzero().squeeze(1)
            out[:, sel, :, c] = attention_weights(self.mode, theta_q[:, sel], keys[:, c], **kw)
        return out.reshape(b, flat.numel(), tk, hk, wk)

    def attention_weights(self, x: Tensor, queries: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Deprecated name of :meth:`attention_map` (the function is
        :func:`nonlocalnet.ops.attention_weights`)."""
        warn_deprecated("NonLocalBlock.attention_weights()", "attention_map()")
        return self.attention_map(x, queries)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, dim={self.dim}, in_channels={self.in_channels}, "
            f"inter_channels={self.inter_channels}, pool_kernel={self.pool_kernel}, "
            f"pool_before_conv={self.pool_before_conv}, use_scale={self.use_scale}, "
            f"norm={self.norm_kind!r}, temporal_group={self.temporal_group}, attend={self.attend!r}, "
            f"projection={self.projection!r}"
        )
