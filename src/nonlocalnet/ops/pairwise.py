"""The non-local operation ``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``, one pure function per
pairwise instantiation of the paper.

Every function takes sequence-major tensors

* ``theta``: ``(B, N, Ck)``, one row per output position ``i`` (never subsampled),
* ``phi``:   ``(B, M, Ck)``, one row per position ``j`` (possibly subsampled),
* ``g``:     ``(B, M, Cv)``, the values ``g(x_j)``,

and returns ``y``: ``(B, N, Cv)``. ``scale`` multiplies the pairwise logit ``theta_i^T phi_j``
(the argument of ``exp`` for the Gaussian forms, ``f`` itself for the dot product, the argument
of the ReLU for concatenation).

No function builds an ``N x M`` matrix unless its ``algorithm`` asks for the quadratic form:
the Gaussian forms use fused attention, the dot product uses associativity, concatenation sorts.

While ``torch.jit.trace``, ``torch.onnx.export`` or ``torch.export`` records the code,
``"auto"`` picks the route that holds for every size (fused attention, the linear dot product)
and no loop bound depends on a size: an exported graph keeps a dynamic batch and clip length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from nonlocalnet.errors import InvalidTypeError, InvalidValueError
from nonlocalnet.ops.dispatch import (
    backward_keys,
    backward_rows,
    choose_softmax_algorithm,
    chunk_rows,
    query_groups,
)

__all__ = [
    "ALGORITHMS",
    "LOW_PRECISION",
    "MODES",
    "SOFTMAX_MODES",
    "attention_weights",
    "check_algorithm",
    "check_mode",
    "concatenation",
    "dot_product",
    "nonlocal_op",
    "softmax_attention",
]

MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
"""The paper's four instantiations of the pairwise function ``f``."""

SOFTMAX_MODES = ("gaussian", "embedded_gaussian")
"""The instantiations normalised by a softmax (``C = sum_j f``)."""

ALGORITHMS: dict[str, tuple[str, ...]] = {
    "gaussian": ("auto", "fused", "flash", "chunked", "naive"),
    "embedded_gaussian": ("auto", "fused", "flash", "chunked", "naive"),
    "dot_product": ("auto", "linear", "quadratic"),
    "concatenation": ("auto", "sorted", "pairwise", "explicit"),
}
"""The algorithms each mode accepts; ``"auto"`` is exact and never builds ``N x M``."""

LOW_PRECISION = (torch.float16, torch.bfloat16)
"""The dtypes computed in float32 (their sums over many positions overflow or lose precision)."""


def _check(theta: Tensor, phi: Tensor, g: Tensor) -> None:
    for name, t in (("theta", theta), ("phi", phi), ("g", g)):
        if not isinstance(t, Tensor):
            raise InvalidTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise InvalidValueError(f"{name} must have shape (B, positions, channels), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InvalidTypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (theta.shape[0] == phi.shape[0] == g.shape[0]):
        raise InvalidValueError(
            f"batch sizes differ: theta {theta.shape[0]}, phi {phi.shape[0]}, g {g.shape[0]}"
        )
    if theta.shape[2] != phi.shape[2]:
        raise InvalidValueError(
            f"theta and phi must have the same channels, got {theta.shape[2]} and {phi.shape[2]}"
        )
    if phi.shape[1] != g.shape[1]:
        raise InvalidValueError(
            f"phi and g must have the same number of positions, got {phi.shape[1]} and {g.shape[1]}"
        )
    if phi.shape[1] == 0:
        raise InvalidValueError("phi and g need at least one position (M >= 1), got M = 0")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise InvalidValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def check_algorithm(mode: str, algorithm: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is known and accepts ``algorithm`` (:data:`ALGORITHMS`)."""
    check_mode(mode)
    if algorithm not in ALGORITHMS[mode]:
        raise InvalidValueError(
            f"unknown algorithm {algorithm!r} for mode {mode!r}; expected one of {ALGORITHMS[mode]}"
        )


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled for ``device_type`` (a no-op for a device type autocast does not know)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


@contextlib.contextmanager
def _fp32(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Yield the tensors in float32 (if they are half/bfloat16) with autocast disabled."""
    with _no_autocast(tensors[0].device.type):
        yield tuple(t.float() if t.dtype in LOW_PRECISION else t for t in tensors)


_CHUNK_ELEMENTS = 1 << 24  # at most this many logits per block of the chunked softmax (64 MiB)


def _shape_agnostic(*tensors: Tensor) -> bool:
    """True when the code must hold for every size, not just the current one: while
    ``torch.jit.trace``, ``torch.onnx.export`` or ``torch.export`` records it, or when a size is
    symbolic. A choice between algorithms or a loop over chunks made from the sizes would fix
    them in the graph. (``torch.compile`` keeps the eager choices, which are faster on CPU; it
    recompiles where they depend on a size.)"""
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or any(not isinstance(s, int) for t in tensors for s in t.shape)
    )


def _softmax_block(theta: Tensor, phi_t: Tensor, g: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``softmax(scale * theta phi^T) g`` and the row log-sum-exp for one block of query rows."""
    logits = torch.bmm(theta, phi_t).mul_(scale)
    row_max = logits.amax(dim=2, keepdim=True)
    p = logits.sub_(row_max).exp_()
    denom = p.sum(dim=2, keepdim=True)
    return torch.bmm(p, g).div_(denom), (row_max + denom.log()).squeeze(2)


def _fused_attention(theta: Tensor, phi: Tensor, g: Tensor, scale: float, groups: int = 1) -> Tensor:
    """``scaled_dot_product_attention`` on one head; unequal widths are zero-padded to the larger
    (zero key channels add nothing to a logit, zero value channels are cut off), so the flash
    kernels serve the raw-feature Gaussian too instead of SDPA's quadratic fallback.

    ``groups > 1`` gives the kernels the query rows as that many heads over the same keys and
    values (broadcast, not copied; autograd sums their gradients), padded with zero rows to a
    multiple of ``groups`` (a zero row's output is cut off, so its gradient is zero and it adds
    nothing to the key and value gradients). See :func:`~nonlocalnet.ops.dispatch.query_groups`.
    """
    ck, cv = theta.shape[2], g.shape[2]
    if ck < cv:
        theta, phi = F.pad(theta, (0, cv - ck)), F.pad(phi, (0, cv - ck))
    elif cv < ck:
        g = F.pad(g, (0, ck - cv))
    b, n, m = theta.shape[0], theta.shape[1], phi.shape[1]
    rows = -(-n // groups)
    if rows * groups != n:
        theta = F.pad(theta, (0, 0, 0, rows * groups - n))
    y = F.scaled_dot_product_attention(
        theta.reshape(b, groups, rows, theta.shape[2]),
        phi.unsqueeze(1).expand(b, groups, m, phi.shape[2]),
        g.unsqueeze(1).expand(b, groups, m, g.shape[2]),
        scale=float(scale),
    )
    return y.reshape(b, groups * rows, y.shape[3])[:, :n, :cv]


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """``softmax(scale * theta phi^T) g`` over chunks of query rows, flash-style backward.

    Forward keeps one ``(B, chunk, M)`` block of logits at a time and saves only the output and
    the row log-sum-exp; backward recomputes each block. Memory ``O(chunk * M + (N + M) C)``,
    all work in large GEMMs. Serves any ``Ck != Cv`` (the raw-feature Gaussian), where the
    fused kernels fall back to the quadratic form.
    """

    @staticmethod
    def forward(ctx, theta: Tensor, phi: Tensor, g: Tensor, scale: float, chunk: int | None) -> Tensor:
        phi_t = phi.transpose(1, 2)
        if chunk is None:  # one block, no size-dependent loop (exported)
            out, lse = _softmax_block(theta, phi_t, g, scale)
        else:
            b, n = theta.shape[:2]
            out = g.new_empty(b, n, g.shape[2])
            lse = theta.new_empty(b, n)
            for s in range(0, n, chunk):
                out[:, s : s + chunk], lse[:, s : s + chunk] = _softmax_block(
                    theta[:, s : s + chunk], phi_t, g, scale
                )
        ctx.save_for_backward(theta, phi, g, out, lse)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        # the forward ran in float32 with autocast off; so does the backward, even when
        # ``backward()`` is called inside an autocast region (a common training-script pattern)
        with _no_autocast(grad_out.device.type):
            return _ChunkedSoftmaxAttention._backward(ctx, grad_out.to(ctx.saved_tensors[3].dtype))

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        theta, phi, g, out, lse = ctx.saved_tensors
        return (*_recomputing_backward(theta, phi, g, out, lse, grad_out, ctx.scale, ctx.chunk), None, None)


def _recomputing_backward(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    scale: float,
    chunk: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``softmax(scale * theta phi^T) g`` from the output and the row log-sum-exp,
    recomputing the probabilities tile by tile (:func:`~nonlocalnet.ops.dispatch.backward_rows`
    query rows times :func:`~nonlocalnet.ops.dispatch.backward_keys` keys; key tiles outermost,
    so the key and value gradients of a tile stay in cache); ``chunk=None``: one block (exported
    graphs)."""
    grad_out = grad_out.contiguous()
    delta = (grad_out * out).sum(dim=2)  # rowsum(dO * O) = rowsum(P * dP)
    if chunk is None:
        phi_t, g_t = phi.transpose(1, 2), g.transpose(1, 2)
        p = torch.bmm(theta, phi_t).mul_(scale).sub_(lse[:, :, None]).exp_()
        ds = torch.bmm(grad_out, g_t).sub_(delta[:, :, None]).mul_(p)
        d_g = torch.bmm(p.transpose(1, 2), grad_out)
        d_theta = torch.bmm(ds, phi).mul_(scale)
        d_phi = torch.bmm(ds.transpose(1, 2), theta).mul_(scale)
        return d_theta, d_phi, d_g
    b, n, m = theta.shape[0], theta.shape[1], phi.shape[1]
    keys = backward_keys(m)
    chunk = max(1, min(backward_rows(b, n, keys), _CHUNK_ELEMENTS // (b * keys)))
    neg_lse, neg_delta = lse.neg()[:, :, None], delta.neg()[:, :, None]
    d_theta = torch.zeros_like(theta)
    d_phi = torch.empty_like(phi)
    d_g = torch.empty_like(g)
    for k0 in range(0, m, keys):
        k, v = phi[:, k0 : k0 + keys], g[:, k0 : k0 + keys]
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        d_k, d_v = torch.zeros_like(k), torch.zeros_like(v)
        for s in range(0, n, chunk):
            q, do = theta[:, s : s + chunk], grad_out[:, s : s + chunk]
            p = torch.baddbmm(neg_lse[:, s : s + chunk], q, k_t, alpha=scale).exp_()
            d_v.baddbmm_(p.transpose(1, 2), do)
            ds = torch.baddbmm(neg_delta[:, s : s + chunk], do, v_t).mul_(p)
            d_theta[:, s : s + chunk].baddbmm_(ds, k, alpha=scale)
            d_k.baddbmm_(ds.transpose(1, 2), q, alpha=scale)
        d_phi[:, k0 : k0 + keys] = d_k
        d_g[:, k0 : k0 + keys] = d_v
    return d_theta, d_phi, d_g


def _pad_to(t: Tensor, width: int) -> Tensor:
    return t if t.shape[2] == width else F.pad(t, (0, width - t.shape[2]))


class _FlashSoftmaxAttention(torch.autograd.Function):
    """CPU flash-attention forward (``_scaled_dot_product_flash_attention_for_cpu``, which also
    returns the row log-sum-exp), chunked recomputing backward in float32.

    The forward runs in the inputs' dtype (bfloat16/float16 kernels accumulate in float32) at the
    padded width ``max(Ck, Cv)``; the backward works at the true widths, so the raw-feature
    Gaussian pays the padding only once. Memory ``O(chunk * M + (N + M) C)``.
    """

    @staticmethod
    def forward(ctx, theta: Tensor, phi: Tensor, g: Tensor, scale: float, chunk: int) -> Tensor:
        ck, cv = theta.shape[2], g.shape[2]
        w = max(ck, cv)
        with _no_autocast(theta.device.type):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                _pad_to(theta, w).unsqueeze(1),
                _pad_to(phi, w).unsqueeze(1),
                _pad_to(g, w).unsqueeze(1),
                scale=float(scale),
            )
        out = out.squeeze(1)[..., :cv]
        ctx.save_for_backward(theta, phi, g, out, lse.squeeze(1))
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        theta, phi, g, out, lse = ctx.saved_tensors
        with _no_autocast(grad_out.device.type):
            work = torch.float32 if theta.dtype in LOW_PRECISION else theta.dtype
            t, p, v, o, do, lse = (x.to(work) for x in (theta, phi, g, out, grad_out, lse))
            grads = _recomputing_backward(t, p, v, o, lse, do, ctx.scale, ctx.chunk)
        return (*(d.to(x.dtype) for d, x in zip(grads, (theta, phi, g), strict=True)), None, None)


def softmax_attention(
    theta: Tensor, phi: Tensor, g: Tensor, *, scale: float = 1.0, algorithm: str = "auto"
) -> Tensor:
    """Gaussian / embedded Gaussian: ``f = exp(scale * theta_i^T phi_j)``, ``C = sum_j f``.

    Exact algorithms, all with memory linear in N except ``"naive"``:

    * ``"fused"``: ``scaled_dot_product_attention`` (flash kernels on CPU and CUDA, with their
      own backward); unequal widths ``Ck != Cv`` are zero-padded to the larger. On CPU, when a
      backward will follow, the query rows go in as several heads where the batch alone would
      leave cores idle in SDPA's backward (:func:`~nonlocalnet.ops.dispatch.query_groups`).
    * ``"flash"``: on CPU the flash kernel's forward (which also gives the row log-sum-exp)
      with the chunked recomputing backward at the true widths (see :class:`_FlashSoftmaxAttention`);
      ``"fused"`` on other devices.
    * ``"chunked"``: the softmax over blocks of query rows in float32, recomputing backward (any
      widths; block size from :func:`~nonlocalnet.ops.dispatch.chunk_rows`).
    * ``"naive"``: the explicit ``(B, N, M)`` affinity (a reference).
    * ``"auto"``: the fastest of fused / flash / chunked for the shapes, dtype, device and pass
      (training when grad is enabled and an input requires grad), by the cost model of
      :func:`~nonlocalnet.ops.dispatch.choose_softmax_algorithm`; always ``"fused"`` while
      exported or traced (no choice or loop bound may depend on a size there).
    """
    _check(theta, phi, g)
    check_algorithm("embedded_gaussian", algorithm)
    agnostic = _shape_agnostic(theta, phi, g)
    grad = not agnostic and _needs_grad(theta, phi, g)
    if algorithm == "auto":
        if agnostic:
            algorithm = "fused"
        else:
            algorithm = choose_softmax_algorithm(
                batch=theta.shape[0],
                n=theta.shape[1],
                m=phi.shape[1],
                ck=theta.shape[2],
                cv=g.shape[2],
                dtype=torch.promote_types(torch.promote_types(theta.dtype, phi.dtype), g.dtype),
                device_type=theta.device.type,
                training=grad,
            )
    if algorithm == "naive":
        logits = torch.bmm(theta, phi.transpose(1, 2)) * scale
        return torch.bmm(logits.softmax(dim=-1), g)
    # Row-major copies (O((N + M) C)): the flash kernels silently fall back to the quadratic
    # math path on transposed views, which is what a conv's (B, C, N) output gives.
    theta, phi, g = theta.contiguous(), phi.contiguous(), g.contiguous()
    out_dtype = torch.promote_types(theta.dtype, g.dtype)
    if algorithm == "chunked":
        chunk = None if agnostic else _chunk(theta, phi)
        with _fp32(theta, phi, g) as (t, p, v):
            return _ChunkedSoftmaxAttention.apply(t, p, v, float(scale), chunk).to(out_dtype)
    # the flash kernels take one dtype (mixed inputs: the promoted one)
    dtype = torch.promote_types(out_dtype, phi.dtype)
    theta, phi, g = (x.to(dtype) for x in (theta, phi, g))
    if algorithm == "flash" and not agnostic and theta.device.type == "cpu":
        return _FlashSoftmaxAttention.apply(theta, phi, g, float(scale), _chunk(theta, phi)).to(out_dtype)
    groups = 1
    if grad and theta.device.type == "cpu":
        groups = query_groups(theta.shape[0], theta.shape[1], _threads())
    return _fused_attention(theta, phi, g, scale, groups).to(out_dtype)


@torch.compiler.assume_constant_result
def _threads() -> int:
    """The intra-op thread count (a constant to ``torch.compile``: it only tunes speed)."""
    return torch.get_num_threads()


def _needs_grad(*tensors: Tensor) -> bool:
    """A backward will follow: grad enabled and an input requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _chunk(theta: Tensor, phi: Tensor) -> int:
    """Query rows per block: :func:`chunk_rows`, capped at ``_CHUNK_ELEMENTS`` logits."""
    b, n, m = theta.shape[0], theta.shape[1], phi.shape[1]
    return max(1, min(chunk_rows(b, n, m), _CHUNK_ELEMENTS // (b * m)))


def dot_product(
    theta: Tensor, phi: Tensor, g: Tensor, *, scale: float = 1.0, algorithm: str = "auto"
) -> Tensor:
    """Dot product: ``f = scale * theta_i^T phi_j``, ``C = M`` (no softmax).

    ``"linear"`` computes ``theta (phi^T g) / M`` in ``O((N + M) Ck Cv)``; ``"quadratic"``
    computes ``(theta phi^T / M) g``; ``"auto"`` picks the cheaper (linear while exported: it
    holds for every size). Half-precision inputs are computed in float32 (sums over M positions
    overflow float16) and returned in their dtype.
    """
    _check(theta, phi, g)
    check_algorithm("dot_product", algorithm)
    n, m, ck, cv = theta.shape[1], phi.shape[1], theta.shape[2], g.shape[2]
    if algorithm == "auto":
        if _shape_agnostic(theta, phi, g):
            algorithm = "linear"  # comparing symbolic costs would fix the sizes
        else:
            linear = (n + m) * ck * cv
            quadratic = n * m * (ck + cv)
            algorithm = "linear" if linear <= quadratic else "quadratic"
    out_dtype = torch.promote_types(theta.dtype, g.dtype)
    with _fp32(theta, phi, g) as (t, p, v):
        if algorithm == "linear":
            y = torch.bmm(t, torch.bmm(p.transpose(1, 2), v) * (scale / m))
        else:
            y = torch.bmm(torch.bmm(t, p.transpose(1, 2)) * (scale / m), v)
    return y.to(out_dtype)


def _project(theta: Tensor, phi: Tensor, w: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``a = scale * theta w[:Ck]`` ``(B, N)`` and ``b = scale * phi w[Ck:]`` ``(B, M)``."""
    ck = theta.shape[2]
    # (1, Ck) @ (B, Ck, N): a GEMV over the channel-major layout a conv produces. (Also avoids
    # ``theta @ w`` with a 1-D w, which torch 2.13's ONNX exporter mistranslates for
    # transposed inputs.)
    a = torch.matmul(w[None, :ck], theta.transpose(1, 2)).squeeze(1) * scale
    b = torch.matmul(w[None, ck:], phi.transpose(1, 2)).squeeze(1) * scale
    return a, b


def _count_not_greater(keys: Tensor, queries: Tensor) -> Tensor:
    """``#{j: keys_j <= queries_i}`` per row, ``(B, M), (B, N) -> (B, N)`` int64, by one merge sort.

    Sorting keys and queries together and counting the keys before each query is exact up to
    ties, where ``a_i + b_j = 0`` contributes nothing either way. (``searchsorted`` would do
    the same but does not export to ONNX.)
    """
    m = keys.shape[1]
    merged = torch.cat([keys, queries], dim=1)
    is_key = torch.cat([torch.ones_like(keys), torch.zeros_like(queries)], dim=1).long()
    _, order = merged.sort(dim=1)
    keys_so_far = is_key.gather(1, order).cumsum(1)
    return torch.empty_like(keys_so_far).scatter_(1, order, keys_so_far)[:, m:]


def _relu_sum_sorted(a: Tensor, b: Tensor, v: Tensor, *, one_chunk: bool) -> Tensor:
    """``y_i = sum_j ReLU(a_i + b_j) g_j / M`` for ``a`` ``(B, N)``, ``b`` ``(B, M)``, ``v = g``
    ``(B, M, Cv)``, by sorting ``b`` and prefix sums (:func:`concatenation`'s ``"sorted"``).
    ``one_chunk``: all channels at once (under symbolic shapes, a step computed from the sizes
    would fix them)."""
    m, n = b.shape[1], a.shape[1]
    # Channel-major (B, Cv, M): cumsum and gather run along the contiguous last axis (about
    # 10x faster than along positions), and g from a conv is already laid out this way.
    v_cm = v.transpose(1, 2)
    b_sorted, order = b.sort(dim=1, descending=True)
    count = m - _count_not_greater(b, -a)  # k_i = #{j: a_i + b_j > 0}: the first k_i columns
    last = (count - 1).clamp(min=0)
    # 1/M where k_i > 0, else 0; NaN for every row if b has a NaN (it may sort outside every
    # prefix, yet the formula makes every y NaN).
    weight_i = (count > 0).to(a.dtype) / m
    weight_i = torch.where(torch.isnan(b).any(dim=1, keepdim=True), torch.nan, weight_i)
    # Channel chunks bound the temporaries (sorted g, two prefix tables, two lookups) to
    # about _CHUNK_ELEMENTS each; the output is the only full-size allocation.
    cv = v_cm.shape[1]
    if one_chunk:
        step = cv
    else:
        step = max(1, min(cv, _CHUNK_ELEMENTS // (4 * v_cm.shape[0] * max(m, n))))
    y = a.new_empty(v_cm.shape[0], cv, n)
    for s in range(0, cv, step):
        c = min(step, cv - s)
        g_sorted = v_cm[:, s : s + c].gather(2, order[:, None, :].expand(-1, c, -1))
        prefix_bg = (g_sorted * b_sorted[:, None, :]).cumsum(2)
        prefix_g = g_sorted.cumsum(2)
        idx = last[:, None, :].expand(-1, c, -1)
        y[:, s : s + c] = torch.addcmul(prefix_bg.gather(2, idx), a[:, None, :], prefix_g.gather(2, idx))
    return y.mul_(weight_i[:, None, :]).transpose(1, 2)


def concatenation(
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    weight: Tensor,
    *,
    scale: float = 1.0,
    algorithm: str = "auto",
) -> Tensor:
    """Concatenation: ``f = ReLU(scale * w^T [theta_i, phi_j])``, ``C = M``.

    ``weight`` is ``w``, shape ``(2 * Ck,)``. Since ``w^T [theta_i, phi_j] = a_i + b_j`` with
    ``a = theta w[:Ck]`` and ``b = phi w[Ck:]``, ``"sorted"`` (the default) sorts ``b`` in
    descending order and takes prefix sums of ``g`` and ``b * g``: ``y_i = (a_i P_g(k_i) +
    P_bg(k_i)) / M`` where ``k_i`` is the number of ``b_j > -a_i``. Exact, differentiable,
    ``O((N + M) log(N + M) + (N + M) Cv)`` time and ``O((N + M) Cv)`` memory. ``"pairwise"``
    forms the ``(B, N, M)`` matrix ``ReLU(a_i + b_j)``; ``"explicit"`` forms the
    ``(B, 2Ck, N, M)`` concatenation as most ports do.
    """
    _check(theta, phi, g)
    check_algorithm("concatenation", algorithm)
    ck = theta.shape[2]
    if weight.shape != (2 * ck,):
        raise InvalidValueError(
            f"concatenation weight must have shape (2 * Ck,) = ({2 * ck},), got {tuple(weight.shape)}"
        )
    n, m = theta.shape[1], phi.shape[1]
    out_dtype = torch.promote_types(theta.dtype, g.dtype)
    with _fp32(theta, phi, g, weight) as (t, p, v, w):
        if algorithm == "explicit":
            pairs = torch.cat(
                [
                    t.transpose(1, 2)[:, :, :, None].expand(-1, -1, -1, m),
                    p.transpose(1, 2)[:, :, None, :].expand(-1, -1, n, -1),
                ],
                dim=1,
            )  # (B, 2Ck, N, M)
            f = torch.relu(torch.einsum("bcnm,c->bnm", pairs, w) * scale)
            return torch.bmm(f, v).div(m).to(out_dtype)
        a, b = _project(t, p, w, scale)  # (B, N), (B, M)
        if algorithm == "pairwise":
            f = torch.relu(a[:, :, None] + b[:, None, :])
            return torch.bmm(f, v).div(m).to(out_dtype)
        y = _relu_sum_sorted(a, b, v, one_chunk=_shape_agnostic(t, p))
    return y.to(out_dtype)


def nonlocal_op(
    mode: str,
    theta: Tensor,
    phi: Tensor,
    g: Tensor,
    *,
    scale: float = 1.0,
    weight: Tensor | None = None,
    algorithm: str = "auto",
) -> Tensor:
    """Dispatch to the function of ``mode`` (one of :data:`MODES`)."""
    check_mode(mode)
    if mode in SOFTMAX_MODES:
        return softmax_attention(theta, phi, g, scale=scale, algorithm=algorithm)
    if mode == "dot_product":
        return dot_product(theta, phi, g, scale=scale, algorithm=algorithm)
    if weight is None:
        raise InvalidValueError("mode 'concatenation' needs the projection weight w (2 * Ck,)")
    return concatenation(theta, phi, g, weight, scale=scale, algorithm=algorithm)


def attention_weights(
    mode: str, theta: Tensor, phi: Tensor, *, scale: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """The normalised pairwise weights ``f(x_i, x_j) / C(x)`` for the given query rows.

    ``theta`` holds only the queries of interest, ``(B, Q, Ck)``; returns ``(B, Q, M)``. Memory
    is ``Q x M``, never ``N x M``. The rows sum to 1 for the Gaussian forms only.
    """
    check_mode(mode)
    _check(theta, phi, phi)
    m = phi.shape[1]
    with _fp32(theta, phi) as (t, p):
        if mode == "concatenation":
            if weight is None:
                raise InvalidValueError("mode 'concatenation' needs the projection weight w (2 * Ck,)")
            w = weight.float() if weight.dtype in LOW_PRECISION else weight
            a, b = _project(t, p, w, scale)
            return torch.relu(a[:, :, None] + b[:, None, :]) / m
        logits = torch.bmm(t, p.transpose(1, 2)) * scale
        if mode == "dot_product":
            return logits / m
        return logits.softmax(dim=-1)
