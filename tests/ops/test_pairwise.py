import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nonlocalnet.ops import (
    MODES,
    attention_weights,
    concatenation,
    dispatch,
    dot_product,
    nonlocal_op,
    pairwise,
    softmax_attention,
)

FAST = {"gaussian": "fused", "embedded_gaussian": "fused", "dot_product": "linear", "concatenation": "sorted"}
ALL = {
    "gaussian": ("chunked", "naive", "fused", "flash"),
    "embedded_gaussian": ("fused", "naive", "chunked", "flash"),
    "dot_product": ("linear", "quadratic"),
    "concatenation": ("sorted", "pairwise", "explicit"),
}


def _qkv(b=2, n=10, m=7, ck=5, cv=3, seed=0, dtype=torch.float32, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return mk(b, n, ck), mk(b, m, ck), mk(b, m, cv), mk(2 * ck)


def loop_reference(mode, theta, phi, g, w, scale):
    """y_i = 1/C sum_j f(x_i, x_j) g_j, literally, in float64."""
    theta, phi, g, w = (t.double() for t in (theta, phi, g, w))
    b, n, _ = theta.shape
    m = phi.shape[1]
    y = torch.zeros(b, n, g.shape[2], dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            fs = []
            for j in range(m):
                s = scale * float(theta[bi, i] @ phi[bi, j])
                if mode in ("gaussian", "embedded_gaussian"):
                    fs.append(math.exp(s))
                elif mode == "dot_product":
                    fs.append(s)
                else:
                    fs.append(max(0.0, scale * float(w @ torch.cat([theta[bi, i], phi[bi, j]]))))
            c = sum(fs) if mode in ("gaussian", "embedded_gaussian") else m
            for j in range(m):
                y[bi, i] += fs[j] / c * g[bi, j]
    return y


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1.0, 0.3])
@pytest.mark.parametrize("nm", [(10, 7), (1, 1), (7, 19)])
def test_every_algorithm_matches_loop_reference(mode, scale, nm):
    theta, phi, g, w = _qkv(n=nm[0], m=nm[1])
    ref = loop_reference(mode, theta, phi, g, w, scale)
    for algorithm in ("auto", *ALL[mode]):
        y = nonlocal_op(mode, theta, phi, g, scale=scale, weight=w, algorithm=algorithm)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5, msg=algorithm)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_matches_quadratic_at_larger_n(mode):
    theta, phi, g, w = _qkv(n=500, m=300, ck=16, cv=12, scale=0.3, dtype=torch.float64)
    slow = {
        "gaussian": "naive",
        "embedded_gaussian": "naive",
        "dot_product": "quadratic",
        "concatenation": "pairwise",
    }[mode]
    fast = nonlocal_op(mode, theta, phi, g, weight=w, algorithm=FAST[mode])
    ref = nonlocal_op(mode, theta, phi, g, weight=w, algorithm=slow)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_fast_paths_float64(mode):
    theta, phi, g, w = (t.requires_grad_() for t in _qkv(n=6, m=5, ck=3, cv=2, dtype=torch.float64))

    def fn(theta, phi, g, w):
        return nonlocal_op(mode, theta, phi, g, scale=0.7, weight=w, algorithm=FAST[mode])

    assert torch.autograd.gradcheck(fn, (theta, phi, g, w), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["fused", "flash", "chunked"])
@pytest.mark.parametrize("widths", [(3, 3), (4, 2), (2, 4)])
def test_gradcheck_softmax_paths_float64(algorithm, widths, monkeypatch):
    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 2 * 5 * 2)  # chunks of 2 query rows
    theta, phi, g, _ = _qkv(n=7, m=5, ck=widths[0], cv=widths[1], dtype=torch.float64)
    leaves = tuple(t.requires_grad_() for t in (theta, phi, g))
    assert torch.autograd.gradcheck(
        lambda t, p, v: softmax_attention(t, p, v, scale=0.8, algorithm=algorithm), leaves
    )


def test_gradcheck_dot_product_quadratic():
    theta, phi, g, _ = (t.requires_grad_() for t in _qkv(dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda t, p, v: dot_product(t, p, v, algorithm="quadratic"), (theta, phi, g)
    )


def test_concatenation_gradients_match_pairwise_form():
    inputs = _qkv(n=40, m=30, ck=6, cv=4, dtype=torch.float64)
    grads = []
    for algorithm in ("sorted", "pairwise"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y = concatenation(*leaves[:3], leaves[3], scale=0.9, algorithm=algorithm)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_concatenation_edge_cases():
    theta, phi, g, _ = _qkv(n=5, m=4, ck=2, cv=3, dtype=torch.float64)
    # every logit negative: f = 0 everywhere, y = 0
    zero = concatenation(theta.abs() + 1, phi.abs() + 1, g, -torch.ones(4, dtype=torch.float64))
    assert torch.equal(zero, torch.zeros_like(zero))
    # every logit positive: y_i = (a_i sum_j g_j + sum_j b_j g_j) / M
    pos = concatenation(theta.abs() + 1, phi.abs() + 1, g, torch.ones(4, dtype=torch.float64))
    a, b = (theta.abs() + 1).sum(-1), (phi.abs() + 1).sum(-1)
    expect = (a[:, :, None] * g.sum(1, keepdim=True) + (b[:, :, None] * g).sum(1, keepdim=True)) / 4
    torch.testing.assert_close(pos, expect)
    # ties in b and logits exactly 0 at the threshold
    phi_t = torch.zeros_like(phi)
    phi_t[:, :, 0] = torch.tensor([1.0, 1.0, -1.0, 0.0])
    for algorithm in ("sorted", "pairwise"):
        y = concatenation(
            torch.ones_like(theta),
            phi_t,
            g,
            torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64),
            algorithm=algorithm,
        )
        torch.testing.assert_close(y, (g[:, :2].sum(1, keepdim=True) / 4).expand_as(y))


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.op = t.numel(), func
        return out


# every algorithm "auto" may run, forced: whatever the cost model picks stays linear in N
_LINEAR = [(m, "auto") for m in MODES] + [
    (m, a) for m in ("gaussian", "embedded_gaussian") for a in dispatch.SOFTMAX_CANDIDATES
]


@pytest.mark.parametrize("mode,algorithm", _LINEAR, ids=[f"{m}-{a}" for m, a in _LINEAR])
@pytest.mark.parametrize("cv", [8, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 6])
def test_fast_paths_never_build_n_by_m(mode, algorithm, cv, dtype, threads, monkeypatch, force_query_groups):
    """No tensor of the forward or backward pass has anywhere near N x M elements (the chunked
    backwards hold one block of chunk x M logits at a time), for every algorithm ``auto`` may
    choose, at equal and unequal widths; ``"fused"`` with its queries as one head or, six
    threads, as six zero-padded groups."""
    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 64 * 1024)
    force_query_groups(threads)
    n, m = 1024, 1024
    theta, phi, g, w = (t.to(dtype).requires_grad_() for t in _qkv(b=1, n=n, m=m, ck=8, cv=cv))
    with _MaxNumel() as probe:
        y = nonlocal_op(mode, theta, phi, g, weight=w, algorithm=algorithm)
        y.float().square().sum().backward()
    # the fused route's groups add a key and value gradient per group: groups x M x C, linear
    assert probe.max_numel <= max(4 * n * 16, 64 * 1024, threads * m * 16), (probe.op, probe.max_numel)
    with _MaxNumel() as naive:
        nonlocal_op(mode, theta, phi, g, weight=w, algorithm=ALL[mode][1])
    assert naive.max_numel >= n * m  # the probe does see an affinity when one is built


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dot_product_accumulates_in_float32(dtype):
    """phi^T g sums M = 4096 products of ~100: 4e5 overflows float16; the result is ~100."""
    m = 4096
    theta = torch.ones(1, 2, 1, dtype=dtype)
    phi = torch.full((1, m, 1), 10.0, dtype=dtype)
    g = torch.full((1, m, 1), 10.0, dtype=dtype)
    y = dot_product(theta, phi, g, algorithm="linear")
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), torch.full((1, 2, 1), 100.0))
    y = concatenation(theta, phi, g, torch.ones(2, dtype=dtype))
    torch.testing.assert_close(y.float(), torch.full((1, 2, 1), 110.0), rtol=1e-2, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_bfloat16(mode):
    theta, phi, g, w = _qkv(n=64, m=32, ck=8, cv=8)
    ref = nonlocal_op(mode, theta, phi, g, weight=w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nonlocal_op(mode, theta.bfloat16(), phi.bfloat16(), g.bfloat16(), weight=w)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.03, rtol=0.03)


def test_softmax_scale_is_applied():
    theta, phi, g, _ = _qkv()
    a = softmax_attention(theta, phi, g, scale=1.0)
    b = softmax_attention(theta, phi, g, scale=0.25)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, softmax_attention(theta * 0.5, phi * 0.5, g))


@pytest.mark.parametrize("mode", MODES)
def test_attention_weights_rows(mode):
    theta, phi, g, w = _qkv(dtype=torch.float64)
    weights = attention_weights(mode, theta, phi, scale=0.6, weight=w)
    assert weights.shape == (2, 10, 7)
    # weights applied to g give the operation itself
    torch.testing.assert_close(weights @ g, nonlocal_op(mode, theta, phi, g, scale=0.6, weight=w))
    if mode in ("gaussian", "embedded_gaussian"):
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 10, dtype=torch.float64))


def test_bad_arguments():
    theta, phi, g, w = _qkv()
    with pytest.raises(ValueError, match=r"theta must have shape \(B, positions, channels\)"):
        softmax_attention(theta[0], phi, g)
    with pytest.raises(ValueError, match="same channels, got 5 and 4"):
        dot_product(theta, phi[..., :4], g)
    with pytest.raises(ValueError, match="same number of positions, got 7 and 6"):
        dot_product(theta, phi, g[:, :6])
    with pytest.raises(ValueError, match="batch sizes differ"):
        dot_product(theta, phi[:1], g[:1])
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        dot_product(theta.long(), phi, g)
    with pytest.raises(ValueError, match=r"shape \(2 \* Ck,\) = \(10,\), got \(9,\)"):
        concatenation(theta, phi, g, w[:9])
    with pytest.raises(ValueError, match="unknown algorithm 'fused' for mode 'dot_product'"):
        dot_product(theta, phi, g, algorithm="fused")
    with pytest.raises(ValueError, match="needs the projection weight"):
        nonlocal_op("concatenation", theta, phi, g)
    with pytest.raises(ValueError, match="unknown mode 'cosine'"):
        nonlocal_op("cosine", theta, phi, g)
    with pytest.raises(ValueError, match="M >= 1"):
        dot_product(theta, phi[:, :0], g[:, :0])


def test_concatenation_channel_chunks_match(monkeypatch):
    """Force one channel per chunk: values and gradients equal the unchunked pairwise form."""
    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 4 * 2 * 40)
    inputs = _qkv(n=40, m=30, ck=6, cv=5, dtype=torch.float64)
    results = []
    for algorithm in ("sorted", "pairwise"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y = concatenation(*leaves[:3], leaves[3], algorithm=algorithm)
        y.pow(3).sum().backward()
        results.append([y, *(t.grad for t in leaves)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


class _Op(torch.nn.Module):
    def __init__(self, mode, algorithm):
        super().__init__()
        self.mode, self.algorithm = mode, algorithm

    def forward(self, theta, phi, g, w):
        return nonlocal_op(self.mode, theta, phi, g, scale=0.7, weight=w, algorithm=self.algorithm)


@pytest.mark.parametrize(
    ("mode", "algorithm", "widths"),
    [
        ("gaussian", "auto", (6, 3)),
        ("gaussian", "auto", (3, 5)),
        ("embedded_gaussian", "auto", (4, 4)),
        ("embedded_gaussian", "chunked", (4, 4)),
        ("embedded_gaussian", "flash", (4, 4)),
        ("gaussian", "flash", (6, 3)),
        ("gaussian", "fused", (6, 3)),
        ("dot_product", "auto", (4, 3)),
        ("concatenation", "auto", (4, 3)),
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_keeps_batch_and_positions_symbolic(mode, algorithm, widths, strict):
    """Traced with inputs that require grad (as a module's parameters make them), every mode keeps
    B, N and M symbolic: the exported program runs at other sizes and matches eager. (Strict
    export traces with dynamo, where a symbolic size looks like an int.)"""
    ck, cv = widths
    theta, phi, g, w = (t.requires_grad_() for t in _qkv(b=2, n=12, m=6, ck=ck, cv=cv))
    b, n, m = torch.export.Dim("b"), torch.export.Dim("n"), torch.export.Dim("m")
    dims = ({0: b, 1: n}, {0: b, 1: m}, {0: b, 1: m}, None)
    program = torch.export.export(
        _Op(mode, algorithm), (theta, phi, g, w), dynamic_shapes=dims, strict=strict
    )
    for size in ((3, 9, 20), (1, 1, 2), (2, 12, 6)):
        t2, p2, g2, _ = _qkv(b=size[0], n=size[1], m=size[2], ck=ck, cv=cv, seed=1)
        got = program.module()(t2, p2, g2, w)
        ref = nonlocal_op(mode, t2, p2, g2, scale=0.7, weight=w, algorithm=algorithm)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("widths", [(3, 3), (4, 2)])
def test_gradcheck_single_block_softmax_float64(widths):
    """The chunked softmax's one-block form (taken when traced with symbolic sizes)."""
    theta, phi, g, _ = _qkv(n=7, m=5, ck=widths[0], cv=widths[1], dtype=torch.float64)
    leaves = tuple(t.requires_grad_() for t in (theta, phi, g))
    assert torch.autograd.gradcheck(
        lambda t, p, v: pairwise._ChunkedSoftmaxAttention.apply(t, p, v, 0.8, None), leaves
    )


def test_fused_pads_unequal_widths_instead_of_the_quadratic_fallback():
    """With Ck != Cv, SDPA alone falls back to its N x M math path; zero-padding keeps it fused."""
    n = m = 1024
    theta, phi, g, _ = _qkv(b=1, n=n, m=m, ck=8, cv=4)
    with _MaxNumel() as probe, torch.no_grad():
        y = softmax_attention(theta, phi, g, algorithm="fused")
    assert probe.max_numel < n * m // 16, (probe.op, probe.max_numel)
    ref = softmax_attention(theta, phi, g, algorithm="naive")
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y = softmax_attention(g, g, theta, algorithm="fused")  # Ck < Cv: theta and phi padded
    torch.testing.assert_close(y, softmax_attention(g, g, theta, algorithm="naive"), atol=1e-5, rtol=1e-5)
