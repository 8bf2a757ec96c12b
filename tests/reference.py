"""A plain float64 reference of the paper's formula, written independently of the library.

It loops over output positions i and key positions j and evaluates
y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j) literally, then z = BN(W_z y) + x (BN in eval form).
Only for tiny inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def conv1x1(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """A 1x1(x1) convolution as a channel contraction, in float64."""
    w = weight.detach().double().reshape(weight.shape[0], weight.shape[1])
    y = torch.einsum("oc,bc...->bo...", w, x)
    if bias is not None:
        y = y + bias.detach().double().reshape(1, -1, *([1] * (x.dim() - 2)))
    return y


def max_pool(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """Non-overlapping max pooling (stride = kernel, remainder dropped), by reshaping."""
    b, c, *spatial = x.shape
    out = [s // k for s, k in zip(spatial, kernel, strict=True)]
    x = x[(slice(None), slice(None), *[slice(0, o * k) for o, k in zip(out, kernel, strict=True)])]
    shape = [b, c]
    for o, k in zip(out, kernel, strict=True):
        shape += [o, k]
    x = x.reshape(shape)
    return x.amax(dim=tuple(range(3, 3 + 2 * len(kernel), 2)))


def pairwise(mode: str, ti: Tensor, pj: Tensor, scale: float, w: Tensor | None) -> float:
    """f(x_i, x_j) for one pair, from the paper's table."""
    if mode in ("gaussian", "embedded_gaussian"):
        return math.exp(scale * float(ti @ pj))
    if mode == "dot_product":
        return scale * float(ti @ pj)
    assert w is not None
    return max(0.0, scale * float(w @ torch.cat([ti, pj])))


def block_maps(block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """theta (B, Ck, *S), phi (B, Ck, *S'), g (B, Ci, *S') in float64."""
    x = x.detach().double()

    def conv(m, t):
        return conv1x1(m.weight, m.bias, t)

    def pool(t):
        return max_pool(t, block.pool_kernel) if block.pool_kernel is not None else t

    theta = x if block.theta is None else conv(block.theta, x)
    if block.pool_before_conv:
        xp = pool(x)
        phi = xp if block.phi is None else conv(block.phi, xp)
        g = conv(block.g, xp)
    else:
        phi = pool(x) if block.phi is None else pool(conv(block.phi, x))
        g = pool(conv(block.g, x))
    return theta, phi, g


def _coords(flat: int, shape) -> tuple[int, ...]:
    """The coordinates of flat index ``flat`` in a grid of ``shape`` (row-major)."""
    out = []
    for size in reversed(tuple(shape)):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def reference_weights(block, x: Tensor) -> Tensor:
    """f(x_i, x_j) / C(x) for every i, j: (B, N, M) float64 (0 across temporal groups)."""
    theta, phi, _ = block_maps(block, x)
    b, n, m = x.shape[0], math.prod(theta.shape[2:]), math.prod(phi.shape[2:])
    tq = theta.reshape(b, theta.shape[1], n)
    pk = phi.reshape(b, phi.shape[1], m)
    w = None if block.concat_project is None else block.concat_project.weight.detach().double().reshape(-1)
    scale = block.logit_scale
    groups = x.shape[2] // block.temporal_group if block.temporal_group else 1
    attend = getattr(block, "attend", "spacetime")
    out = torch.zeros(b, n, m, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            if attend == "space":  # the query's own frame (keys not pooled in time)
                js = [j for j in range(m) if _coords(j, phi.shape[2:])[0] == _coords(i, theta.shape[2:])[0]]
            elif attend == "time":  # the key cell holding the query's position, every frame
                _, hi, wi = _coords(i, theta.shape[2:])
                cell = (hi // (theta.shape[3] // phi.shape[3]), wi // (theta.shape[4] // phi.shape[4]))
                js = [j for j in range(m) if _coords(j, phi.shape[2:])[1:] == cell]
            else:
                gi = i * groups // n
                js = [j for j in range(m) if j * groups // m == gi]
            f = [pairwise(block.mode, tq[bi, :, i], pk[bi, :, j], scale, w) for j in js]
            c = sum(f) if block.mode in ("gaussian", "embedded_gaussian") else len(js)
            for j, fj in zip(js, f, strict=True):
                out[bi, i, j] = fj / c
    return out


def reference_block(block, x: Tensor) -> Tensor:
    """z = BN(W_z y) + x in float64, BN applied with its running statistics (eval form)."""
    _, _, g = block_maps(block, x)
    b = x.shape[0]
    weights = reference_weights(block, x)
    gv = g.reshape(b, g.shape[1], -1)
    y = torch.zeros(b, gv.shape[1], weights.shape[1], dtype=torch.float64)
    for bi in range(b):
        for i in range(weights.shape[1]):
            acc = torch.zeros(gv.shape[1], dtype=torch.float64)
            for j in range(weights.shape[2]):
                acc += weights[bi, i, j] * gv[bi, :, j]
            y[bi, :, i] = acc
    y = y.reshape(b, -1, *x.shape[2:])
    z = conv1x1(block.out.weight, block.out.bias, y)
    norm = block.norm
    if hasattr(norm, "running_mean"):
        shape = (1, -1, *([1] * (x.dim() - 2)))
        mean = norm.running_mean.double().reshape(shape)
        var = norm.running_var.double().reshape(shape)
        z = (z - mean) / torch.sqrt(var + norm.eps)
        z = z * norm.weight.detach().double().reshape(shape) + norm.bias.detach().double().reshape(shape)
    return z + x.double()


def randomise(block, seed: int = 0) -> None:
    """Give every parameter and BN statistic a non-trivial value (the init makes W_z y vanish)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "weight" in name else 0.1))
        for name, buf in block.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
