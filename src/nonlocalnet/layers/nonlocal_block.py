"""``NonLocalBlock``: the paper's non-local block for 1D, 2D and 3D inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.layers.affine import AffineChannel
from nonlocalnet.layers.norm import create_norm
from nonlocalnet.layers.options import NonLocalOptions
from nonlocalnet.layers.pointwise import channels_first, pointwise, pointwise_channels_first, to_sequence
from nonlocalnet.ops import LOW_PRECISION, SOFTMAX_MODES, attention_weights, nonlocal_op

__all__ = ["NonLocalBlock"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LAYOUT = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
_NORMS_WITH_SCALE = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, AffineChannel)


def _channels(in_channels: Any, inter_channels: Any) -> tuple[int, int]:
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise InvalidValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if inter_channels is None:
        return in_channels, max(in_channels // 2, 1)
    if isinstance(inter_channels, bool) or not isinstance(inter_channels, int):
        raise InvalidTypeError(f"inter_channels must be an int, got {type(inter_channels).__name__}")
    if inter_channels < 1:
        raise InvalidValueError(f"inter_channels must be >= 1, got {inter_channels}")
    return in_channels, inter_channels


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class NonLocalBlock(nn.Module):
    """Non-local block ``z = BN(W_z y) + x`` with ``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``
    (Wang et al., CVPR 2018, section 3).

    Args:
        in_channels: channels ``C`` of the input.
        inter_channels: bottleneck width ``Ci`` of theta, phi and g (default ``C // 2``).
        dim: 1, 2 or 3 for ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)`` inputs.
        options: the block's choices (:class:`~nonlocalnet.layers.NonLocalOptions`, or a mapping
            of its fields over its defaults; default: its defaults, the paper's block).
        **overrides: fields of ``options`` to change (``NonLocalBlock(64, mode="dot_product")``).

    The options are kept as :attr:`options`; ``mode``, ``pool_kernel`` (the resolved kernel,
    ``None`` without subsampling), ``use_scale`` (resolved to a bool for this mode) and the other
    choices the forward reads are attributes too. Submodules are named ``theta``, ``phi``, ``g``,
    ``out`` (``W_z``), ``norm`` and, for concatenation, ``concat_project`` (``2 Ci -> 1``, no
    bias), so state dicts map one-to-one onto other implementations.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        dim: int = 3,
        options: NonLocalOptions | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        opts = NonLocalOptions.coerce(options, name="options").replace(**overrides)
        self.pool_kernel: tuple[int, ...] | None = opts.validate(dim)
        self.in_channels, self.inter_channels = _channels(in_channels, inter_channels)
        self.options = opts
        self.dim = dim
        self.mode = opts.mode
        self.pool_before_conv = opts.pool_before_conv
        self.use_scale = opts.use_scale is True or (
            opts.use_scale == "softmax" and opts.mode in SOFTMAX_MODES
        )
        self.temporal_group = opts.temporal_group
        self.attend = opts.attend
        self.algorithm = opts.algorithm
        self.projection = opts.projection

        conv, ci, bias = _CONV[dim], self.inter_channels, opts.bias
        embedded = opts.mode != "gaussian"
        self.theta = conv(in_channels, ci, 1, bias=bias) if embedded else None
        self.phi = conv(in_channels, ci, 1, bias=bias) if embedded else None
        self.g = conv(in_channels, ci, 1, bias=bias)
        self.concat_project = conv(2 * ci, 1, 1, bias=False) if opts.mode == "concatenation" else None
        self.pool = (
            None if self.pool_kernel is None else _POOL[dim](self.pool_kernel, stride=self.pool_kernel)
        )
        self.out = conv(ci, in_channels, 1, bias=bias)
        self.norm = create_norm(opts.norm, in_channels, dim, eps=opts.bn_eps)
        self.reset_parameters()

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
            if self.options.init == "msra":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, std=self.options.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if isinstance(self.norm, _NORMS_WITH_SCALE):
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
        return (self.pool_kernel[1], self.pool_kernel[2]) if self.pool_kernel is not None else (1, 1)

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

    def _op(self, theta: Tensor, phi: Tensor, g: Tensor) -> Tensor:
        """The block's pairwise function on ``(B', N', C)`` sequences: ``y`` ``(B', N', Ci)``."""
        weight, scale = self._concat_weight(), self.logit_scale
        return nonlocal_op(self.mode, theta, phi, g, scale=scale, weight=weight, algorithm=self.algorithm)

    def _weights(self, theta: Tensor, phi: Tensor) -> Tensor:
        """Normalised weights ``f / C`` of queries ``theta`` over keys ``phi``."""
        return attention_weights(self.mode, theta, phi, scale=self.logit_scale, weight=self._concat_weight())

    def _response(self, x: Tensor) -> Tensor:
        """``y`` as a sequence ``(B, N, Ci)``."""
        theta, phi, g, key_shape = self._projections(x)
        b, spatial = x.shape[0], tuple(x.shape[2:])
        if self.attend == "time":
            y = self._op(
                self._time_queries(theta, spatial),
                self._time_keys(phi, key_shape),
                self._time_keys(g, key_shape),
            )  # (B * H' * W', T * ph * pw, Ci)
            t, h, w = spatial
            ph, pw = self._cell()
            y = y.reshape(b, h // ph, w // pw, t, ph, pw, self.inter_channels)
            return y.permute(0, 3, 1, 4, 2, 5, 6).reshape(b, -1, self.inter_channels)
        groups = self._groups(x)
        theta, phi, g = (t.reshape(b * groups, -1, t.shape[2]) for t in (theta, phi, g))
        y = self._op(theta, phi, g)  # (B * groups, N / groups, Ci)
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
        if self.attend == "time":
            return self._time_attention_map(theta_q, phi, key_shape, flat, spatial)
        if groups == 1:
            w = self._weights(theta_q, phi)
            return w.reshape(x.shape[0], flat.numel(), *key_shape)
        phi_groups = phi.reshape(x.shape[0], groups, -1, phi.shape[2])
        per_group = math.prod(spatial) // groups
        out = theta_q.new_zeros(x.shape[0], flat.numel(), groups, phi_groups.shape[2])
        out = out.float() if out.dtype in LOW_PRECISION else out
        query_group = flat // per_group
        for grp in query_group.unique().tolist():
            sel = (query_group == grp).nonzero().squeeze(1)
            out[:, sel, grp] = self._weights(theta_q[:, sel], phi_groups[:, grp])
        return out.reshape(x.shape[0], flat.numel(), *key_shape)

    def _time_attention_map(
        self, theta_q: Tensor, phi: Tensor, key_shape: tuple[int, ...], flat: Tensor, spatial: tuple[int, ...]
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
            out[:, sel, :, c] = self._weights(theta_q[:, sel], keys[:, c])
        return out.reshape(b, flat.numel(), tk, hk, wk)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, dim={self.dim}, in_channels={self.in_channels}, "
            f"inter_channels={self.inter_channels}, pool_kernel={self.pool_kernel}, "
            f"pool_before_conv={self.pool_before_conv}, use_scale={self.use_scale}, "
            f"norm={self.options.norm!r}, temporal_group={self.temporal_group}, attend={self.attend!r}, "
            f"projection={self.projection!r}"
        )
