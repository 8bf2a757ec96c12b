"""Every algorithm's backward behaves the same whether ``backward()`` runs inside or outside an
active ``torch.autocast`` region (training scripts often call it inside)."""

import pytest
import torch

from nonlocalnet import NonLocalBlock
from nonlocalnet.ops import ALGORITHMS, nonlocal_op
from nonlocalnet.ops.dispatch import choose_softmax_algorithm

CASES = [(mode, algorithm) for mode, algorithms in ALGORITHMS.items() for algorithm in algorithms]


def _inputs(mode):
    gen = torch.Generator().manual_seed(0)
    ck, cv = (6, 6) if mode != "gaussian" else (6, 4)
    theta = torch.randn(2, 24, ck, generator=gen)
    phi = torch.randn(2, 12, ck, generator=gen)
    g = torch.randn(2, 12, cv, generator=gen)
    weight = torch.randn(2 * ck, generator=gen) if mode == "concatenation" else None
    return theta, phi, g, weight


def _grads(mode, algorithm, backward_in_autocast):
    theta, phi, g, weight = _inputs(mode)
    leaves = [t.requires_grad_() for t in (theta, phi, g)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nonlocal_op(mode, theta, phi, g, weight=weight, algorithm=algorithm, scale=0.5)
        loss = y.float().square().sum()
        if backward_in_autocast:
            loss.backward()
    if not backward_in_autocast:
        loss.backward()
    return [t.grad for t in leaves]


# algorithms that run a custom autograd function (their own backward, in float32 with autocast
# off): bit-identical either way. The others are PyTorch ops, whose backward follows autocast as
# every op of the network does (bf16 matmuls inside the region): close at bf16 precision.
CUSTOM_BACKWARD = {(m, a) for m in ("gaussian", "embedded_gaussian") for a in ("chunked", "flash")}


def _auto_choice(mode):
    theta, _phi, g, _ = _inputs(mode)
    return choose_softmax_algorithm(
        batch=2,
        n=24,
        m=12,
        ck=theta.shape[2],
        cv=g.shape[2],
        dtype=torch.bfloat16,
        device_type="cpu",
        training=True,
    )


CUSTOM_BACKWARD |= {(m, "auto") for m in ("gaussian", "embedded_gaussian") if _auto_choice(m) != "fused"}


@pytest.mark.parametrize("mode,algorithm", CASES, ids=[f"{m}-{a}" for m, a in CASES])
@pytest.mark.parametrize("threads", [1, 6])
def test_backward_inside_autocast_equals_backward_outside(mode, algorithm, threads, force_query_groups):
    """``threads = 6``: ``"fused"`` gives SDPA the queries as 3 groups a batch item."""
    force_query_groups(threads)
    outside = _grads(mode, algorithm, backward_in_autocast=False)
    inside = _grads(mode, algorithm, backward_in_autocast=True)
    for a, b in zip(inside, outside, strict=True):
        assert a is not None and a.dtype == torch.float32 and torch.isfinite(a).all()
        if (mode, algorithm) in CUSTOM_BACKWARD:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0.02 * float(b.abs().max()))


@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"])
def test_a_block_trains_with_backward_inside_autocast(mode):
    """The reported case: Gaussian and embedded Gaussian blocks, bf16 on CPU, backward() inside
    the autocast region raised "Input dtypes must be the same" in the chunked backward."""
    torch.manual_seed(0)
    block = NonLocalBlock(8, mode=mode, dim=3).train()
    x = torch.randn(2, 8, 4, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block(x).float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)
