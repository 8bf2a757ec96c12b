import itertools

import pytest
import torch
from reference import randomise, reference_block, reference_weights

from nonlocalnet import MODES, NonLocalBlock, NonLocalOptions

SIZES = {1: (12,), 2: (4, 6), 3: (4, 4, 4)}


def _input(dim, channels=6, batch=2, seed=1, size=None):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *(size or SIZES[dim]), generator=gen) * 0.5


def _block(mode, dim, **kw):
    block = NonLocalBlock(6, 4, mode=mode, dim=dim, **kw)
    randomise(block)
    return block.eval()


@pytest.mark.parametrize(
    "mode,dim,sub_sample,pool_before_conv,scale",
    list(itertools.product(MODES, (1, 2, 3), (True, False), (False, True), (False, True))),
)
def test_block_matches_float64_reference(mode, dim, sub_sample, pool_before_conv, scale):
    block = _block(mode, dim, sub_sample=sub_sample, pool_before_conv=pool_before_conv, use_scale=scale)
    x = _input(dim)
    with torch.no_grad():
        out = block(x)
    ref = reference_block(block, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_block_float64_matches_reference_tightly(mode):
    block = _block(mode, 3).double()
    x = _input(3).double()
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", [(2, 2, 2), (1, 3, 3), 2])
def test_custom_pool_kernel_matches_reference(mode, kernel):
    block = _block(mode, 3, pool_kernel=kernel)
    x = _input(3, size=(4, 7, 6))  # 7 is not a multiple of 2 or 3: the remainder is dropped
    with torch.no_grad():
        torch.testing.assert_close(block(x).double(), reference_block(block, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group,kernel", [(2, (1, 2, 2)), (4, (2, 2, 2)), (2, (2, 1, 1))])
def test_temporal_grouping_matches_reference(mode, group, kernel):
    block = _block(mode, 3, temporal_group=group, pool_kernel=kernel)
    x = _input(3, size=(8, 4, 4))
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out.double(), reference_block(block, x), atol=1e-5, rtol=1e-5)
    ungrouped = _block(mode, 3, pool_kernel=kernel)
    with torch.no_grad():
        assert not torch.allclose(ungrouped(x), out, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm", ["batchnorm", "none"])
@pytest.mark.parametrize("init", ["msra", "normal"])
def test_identity_at_init(mode, norm, init):
    block = NonLocalBlock(6, mode=mode, norm=norm, init=init)
    x = _input(3)
    for train in (True, False):
        block.train(train)
        assert torch.equal(block(x), x)
    # the convs themselves are not zero: only the output path is
    assert block.g.weight.abs().sum() > 0
    if norm == "none":
        assert block.out.weight.abs().sum() == 0
    else:
        assert block.norm.weight.abs().sum() == 0 and block.out.weight.abs().sum() > 0
    randomise(block)
    assert not torch.allclose(block.eval()(x), x)
    block.reset_parameters()
    assert torch.equal(block(x), x)


def test_init_std_and_msra_differ():
    normal = NonLocalBlock(64, init="normal", init_std=0.01)
    msra = NonLocalBlock(64, init="msra")
    assert abs(normal.theta.weight.std().item() - 0.01) < 0.002
    # He-normal, fan-out = 32 output channels: std sqrt(2 / 32) = 0.25
    assert abs(msra.theta.weight.std().item() - 0.25) < 0.03
    assert torch.count_nonzero(normal.theta.bias) == 0


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_names(mode):
    keys = set(NonLocalBlock(8, mode=mode).state_dict())
    expected = {
        "g.weight",
        "g.bias",
        "out.weight",
        "out.bias",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }
    if mode != "gaussian":
        expected |= {"theta.weight", "theta.bias", "phi.weight", "phi.bias"}
    if mode == "concatenation":
        expected |= {"concat_project.weight"}
    assert keys == expected
    block = NonLocalBlock(8, mode=mode, norm="none", bias=False)
    assert not any(k.startswith("norm.") or k.endswith(".bias") for k in block.state_dict())


def test_presets():
    released = NonLocalBlock(8, options=NonLocalOptions.released())
    assert released.pool_before_conv and released.use_scale and released.options.init == "normal"
    paper = NonLocalBlock(8, options=NonLocalOptions.paper(), mode="dot_product")
    assert not paper.pool_before_conv and not paper.use_scale and paper.mode == "dot_product"
    assert NonLocalOptions.paper() == NonLocalOptions()
    assert NonLocalOptions.released(mode="dot_product").mode == "dot_product"


def test_pool_before_and_after_differ():
    x = _input(3)
    before = _block("embedded_gaussian", 3, pool_before_conv=True)
    after = _block("embedded_gaussian", 3, pool_before_conv=False)
    with torch.no_grad():
        assert not torch.allclose(before(x), after(x), atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_block_algorithms_agree(mode):
    algos = {
        "gaussian": "naive",
        "embedded_gaussian": "naive",
        "dot_product": "quadratic",
        "concatenation": "explicit",
    }
    fast = _block(mode, 2)
    slow = _block(mode, 2, algorithm=algos[mode])
    x = _input(2, size=(9, 10))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_block_float64(mode):
    block = _block(mode, 2).double().train()
    x = _input(2, size=(4, 4)).double().requires_grad_()
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_bfloat16_close_to_float32(mode):
    block = _block(mode, 3)
    x = _input(3, size=(4, 8, 8))
    with torch.no_grad():
        ref = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_and_channels_last(mode):
    block = _block(mode, 3)
    x = _input(3, size=(4, 6, 6))
    with torch.no_grad():
        ref = block(x)
        cl = block(x.contiguous(memory_format=torch.channels_last_3d))
        big = torch.randn(2, 6, 6, 4, 6)
        big[:, :, :, :, :] = x.permute(0, 1, 3, 2, 4)
        nc = block(big.transpose(2, 3))  # a non-contiguous view with the same values as x
        sliced = block(torch.cat([x, x], dim=-1)[..., ::2].contiguous()[..., :6])
    assert not big.transpose(2, 3).is_contiguous()
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nc, ref, atol=1e-5, rtol=1e-5)
    assert sliced.shape == ref.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", [None, 2])
def test_attention_weights_match_reference_rows(mode, group):
    block = _block(mode, 3, temporal_group=group)
    x = _input(3, size=(4, 4, 6))
    ref = reference_weights(block, x)  # (B, N, M)
    queries = torch.tensor([0, 17, 40, 95])
    with torch.no_grad():
        w = block.attention_map(x, queries)
    assert w.shape == (2, 4, 4, 2, 3)
    torch.testing.assert_close(w.reshape(2, 4, -1).double(), ref[:, queries], atol=1e-6, rtol=1e-5)
    coords = [(0, 0, 0), (0, 2, 5), (1, 2, 4), (3, 3, 5)]
    with torch.no_grad():
        torch.testing.assert_close(block.attention_map(x, coords), w)


def test_attention_weights_bad_queries():
    block = _block("embedded_gaussian", 3)
    x = _input(3)
    with pytest.raises(ValueError, match="outside the input"):
        block.attention_map(x, [(4, 0, 0)])
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        block.attention_map(x, torch.tensor([64]))
    with pytest.raises(TypeError, match="integer tensor"):
        block.attention_map(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="3 coordinates"):
        block.attention_map(x, [(0, 0)])


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_and_nan(mode):
    block = _block(mode, 2)
    empty = torch.zeros(0, 6, 4, 4)
    assert block(empty).shape == (0, 6, 4, 4)
    x = _input(2, size=(4, 4))
    x[0, :, 1, 1] = float("nan")
    with torch.no_grad():
        out = block(x)
    assert torch.isnan(out[0, :, 1, 1]).all()  # NaN in gives NaN out
    assert torch.isnan(out[0]).all()  # every position attends to the NaN one
    assert torch.isfinite(out[1]).all()  # the other sample is untouched


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"mode": "softmax"}, ValueError, "unknown mode 'softmax'; expected one of"),
        ({"inter_channels": 0}, ValueError, "inter_channels must be >= 1, got 0"),
        ({"inter_channels": 2.0}, TypeError, "inter_channels must be an int"),
        ({"dim": 4}, ValueError, "dim must be 1, 2 or 3"),
        ({"norm": "layernorm"}, ValueError, "unknown norm"),
        ({"init": "xavier"}, ValueError, "unknown init"),
        ({"pool_kernel": (1, 2)}, ValueError, "pool_kernel must be"),
        ({"temporal_group": 2, "dim": 2}, ValueError, "temporal_group needs dim=3"),
        ({"algorithm": "sorted"}, ValueError, "unknown algorithm 'sorted' for mode 'embedded_gaussian'"),
    ],
)
def test_bad_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NonLocalBlock(8, **kwargs)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        NonLocalBlock(0)


def test_bad_inputs():
    block = NonLocalBlock(8)
    with pytest.raises(ValueError, match=r"expected a 5-D input \(B, C, T, H, W\).*got shape \(2, 8, 4, 4\)"):
        block(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="expected 8 channels.*got 6"):
        block(torch.randn(2, 6, 2, 4, 4))
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.int64"):
        block(torch.ones(2, 8, 2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"spatial size \(2, 1, 4\) is smaller than the pool kernel"):
        block(torch.randn(2, 8, 2, 1, 4))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        block([[1.0]])
    grouped = NonLocalBlock(8, temporal_group=4)
    with pytest.raises(ValueError, match="temporal_group=4 must divide the 6 input frames"):
        grouped(torch.randn(1, 8, 6, 4, 4))
    NonLocalBlock(8, sub_sample=False).eval()(torch.randn(1, 8, 1, 1, 1))  # no kernel: any size


def test_input_dtype_must_match_the_parameters_outside_autocast():
    block = NonLocalBlock(8).eval()
    x = torch.randn(1, 8, 2, 4, 4)
    with pytest.raises(
        TypeError, match=r"input dtype torch.bfloat16 differs from the block's parameters \(torch.float32\)"
    ):
        block(x.bfloat16())
    with pytest.raises(
        TypeError, match="torch.float32 differs from the block's parameters \\(torch.float64\\)"
    ):
        block.double()(x)
    block.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x.bfloat16()).shape == x.shape  # autocast casts the inputs of each product


_LINEAR = [(m, "auto") for m in MODES] + [
    (m, a) for m in ("gaussian", "embedded_gaussian") for a in ("fused", "flash", "chunked")
]


@pytest.mark.parametrize("mode,algorithm", _LINEAR, ids=[f"{m}-{a}" for m, a in _LINEAR])
@pytest.mark.parametrize("grad", [False, True])
def test_block_never_builds_n_by_m(mode, algorithm, grad, monkeypatch):
    """The block hands the ops transposed views of conv outputs: the fast paths must still run
    (SDPA, for one, silently falls back to the quadratic math path on such inputs). The chunked
    softmax holds chunk x M logits, bounded by _CHUNK_ELEMENTS (made small here)."""
    from ops.test_pairwise import _MaxNumel

    from nonlocalnet.ops import pairwise

    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 1 << 18)

    from nonlocalnet.ops.dispatch import SOFTMAX_CANDIDATES

    assert algorithm == "auto" or algorithm in SOFTMAX_CANDIDATES  # every algorithm auto may run
    block = _block(mode, 2).train(grad)
    block.algorithm = algorithm
    x = torch.randn(1, 6, 64, 64, requires_grad=grad)  # N = 4096 queries, M = 1024 keys
    with _MaxNumel() as probe, torch.set_grad_enabled(grad):
        y = block(x)
        if grad:
            y.square().sum().backward()
    assert probe.max_numel < 4096 * 1024 // 4, (probe.op, probe.max_numel)
