"""The block's 1x1 convs as batched GEMMs on position sequences, against the conv modules."""

import itertools

import pytest
import torch
from reference import randomise, reference_block
from torch import nn

from nonlocalnet import MODES, NonLocalBlock
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.layers.pointwise import channels_first, pointwise, pointwise_channels_first, to_sequence

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_SIZE = {1: (7,), 2: (3, 5), 3: (2, 3, 4)}
_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def _convs(dim, widths, bias, cin=5):
    torch.manual_seed(0)
    return [_CONV[dim](cin, w, 1, bias=bias).double() for w in widths]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_sequence_views_round_trip_without_copies(dim):
    x = torch.randn(2, 5, *_SIZE[dim])
    layouts = [x] + ([x.contiguous(memory_format=_LAST[dim])] if dim in _LAST else [])
    for t in layouts:
        seq = to_sequence(t)
        assert seq.shape == (2, x[0, 0].numel(), 5)
        assert seq.data_ptr() == t.data_ptr()  # a view
        torch.testing.assert_close(seq, x.flatten(2).transpose(1, 2), rtol=0, atol=0)
        back = channels_first(seq, x.shape[2:])
        assert back.data_ptr() == t.data_ptr()
        torch.testing.assert_close(back, x, rtol=0, atol=0)


@pytest.mark.parametrize("dim,bias,last", list(itertools.product([1, 2, 3], [True, False], [False, True])))
def test_pointwise_is_the_convs_concatenated_with_their_gradients(dim, bias, last):
    convs = _convs(dim, (3, 4, 2), bias)
    x = torch.randn(3, 5, *_SIZE[dim], dtype=torch.float64)
    if last and dim in _LAST:
        x = x.contiguous(memory_format=_LAST[dim])
    x.requires_grad_()
    ref = torch.cat([c(x) for c in convs], dim=1)
    out = channels_first(pointwise(to_sequence(x), convs), x.shape[2:])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    params = [x] + [p for c in convs for p in c.parameters()]
    want = torch.autograd.grad(ref, params, grad)
    got = torch.autograd.grad(out, params, grad)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_channels_first_is_the_conv(bias):
    (conv,) = _convs(3, (6,), bias, cin=4)
    x = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    seq = to_sequence(x)
    out = pointwise_channels_first(seq, conv)
    torch.testing.assert_close(out.reshape(2, 6, 2, 3, 3), conv(x), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous()


def test_pointwise_refuses_what_is_not_a_plain_1x1_conv():
    seq = torch.randn(1, 4, 5)
    with pytest.raises(InvalidValueError, match="1x1 convolution without groups"):
        pointwise(seq, [nn.Conv2d(5, 3, 3)])
    with pytest.raises(InvalidValueError, match="1x1 convolution without groups"):
        pointwise(seq, [nn.Conv2d(5, 5, 1, groups=5)])
    with pytest.raises(InvalidValueError, match="all of the convs with a bias or all without"):
        pointwise(seq, [nn.Conv2d(5, 3, 1), nn.Conv2d(5, 3, 1, bias=False)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pool_before_conv", [False, True])
def test_block_gradients_match_across_input_layouts(mode, pool_before_conv):
    """Channels-last and non-contiguous inputs give the contiguous input's output and gradients,
    for the input and every parameter (the projections read the input through strided views)."""
    block = NonLocalBlock(
        6, 4, mode=mode, pool_before_conv=pool_before_conv, use_scale=True, projection="gemm"
    )
    randomise(block)
    block = block.double().train()
    x = torch.randn(3, 6, 4, 4, 6, dtype=torch.float64)
    outs = []
    for t in (
        x,
        x.contiguous(memory_format=torch.channels_last_3d),
        x.transpose(3, 4).contiguous().transpose(3, 4),
    ):
        t = t.detach().requires_grad_()
        y = block(t)
        grads = torch.autograd.grad(
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [t, *block.parameters()]
        )
        outs.append((y, grads))
    for y, grads in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=1e-10, atol=1e-10)
        for g, want in zip(grads, outs[0][1], strict=True):
            torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pool_before_conv", [False, True])
def test_block_without_biases_matches_the_float64_reference(mode, pool_before_conv):
    block = NonLocalBlock(
        6, 4, mode=mode, bias=False, pool_before_conv=pool_before_conv, use_scale=True, projection="gemm"
    )
    randomise(block)
    block = block.double().eval()
    x = torch.randn(2, 6, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(block, x), rtol=1e-10, atol=1e-10)


def test_a_parametrized_weight_is_the_weight_the_block_uses():
    """Parametrizations act when the weight is read, so they apply to the matrix products."""
    from torch.nn.utils.parametrizations import weight_norm

    block = NonLocalBlock(6, 4, use_scale=True, projection="gemm")
    randomise(block)
    block = block.double().eval()
    plain = NonLocalBlock(6, 4, use_scale=True, projection="gemm").double().eval()
    plain.load_state_dict(block.state_dict())
    weight_norm(block.g)
    with torch.no_grad():
        block.g.parametrizations.weight.original0.mul_(3.0)  # the norm: the weight triples
        plain.g.weight.mul_(3.0)
    x = torch.randn(2, 6, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(x), rtol=1e-10, atol=1e-10)


_CONFIGS = [
    {"mode": m, "dim": d, "sub_sample": sub, "pool_before_conv": before}
    for m in MODES
    for d in (1, 2, 3)
    for sub in (True, False)
    for before in (False, True)
] + [
    {"mode": m, **kw}
    for m in MODES
    for kw in ({"temporal_group": 2}, {"attend": "space"}, {"attend": "time"}, {"pool_kernel": (2, 2, 2)})
]


@pytest.mark.parametrize("options", _CONFIGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gemm_projection_equals_the_conv_modules(options):
    """``projection="gemm"`` computes what ``"conv"`` (the modules, tested against the float64
    reference of the paper's formula) computes: outputs, the input's and every parameter's
    gradient, and the attention map, in float64."""
    dim = options.get("dim", 3)
    conv = NonLocalBlock(6, 4, use_scale=True, **options)
    randomise(conv)
    conv = conv.double().train()
    gemm = NonLocalBlock(6, 4, use_scale=True, projection="gemm", **options).double().train()
    gemm.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, *({1: (8,), 2: (4, 6), 3: (4, 4, 6)}[dim]), dtype=torch.float64)
    grads = []
    for block in (conv, gemm):
        xi = x.clone().requires_grad_()
        y = block(xi)
        grads.append((y, torch.autograd.grad((y * y).sum(), [xi, *block.parameters()])))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(
            gemm.attention_map(x, torch.tensor([0, 5, 7])), conv.attention_map(x, torch.tensor([0, 5, 7]))
        )


def test_projection_is_checked_and_in_the_repr():
    with pytest.raises(InvalidValueError, match="unknown projection 'matmul'"):
        NonLocalBlock(6, projection="matmul")
    assert "projection='gemm'" in repr(NonLocalBlock(6, projection="gemm"))
