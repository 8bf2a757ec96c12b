"""``attend``: space-only, time-only and space-time attention (the paper's Table 2d), each exact
against the float64 formula with the keys restricted, and never an ``N x M`` tensor."""

import pytest
import torch
from reference import randomise, reference_block, reference_weights

from nonlocalnet import MODES, NonLocalBlock


def _block(mode, **kw):
    block = NonLocalBlock(6, 4, mode=mode, dim=3, **kw)
    randomise(block)
    return block.eval()


def _input(size=(4, 4, 6), batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, *size, generator=gen) * 0.5


KERNELS = [(1, 2, 2), (1, 1, 1), (2, 2, 1), None]
# space-only attention needs no temporal subsampling (that case is an error, tested below)
RESTRICTIONS = [("space", k) for k in KERNELS if k is None or k[0] == 1] + [("time", k) for k in KERNELS]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attend,kernel", RESTRICTIONS)
def test_attend_matches_the_restricted_formula(mode, attend, kernel):
    options = {"pool_kernel": kernel} if kernel is not None else {"sub_sample": False}
    block = _block(mode, attend=attend, **options)
    x = _input()
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out.double(), reference_block(block, x), atol=1e-5, rtol=1e-5)
    everywhere = _block(mode, **options)
    with torch.no_grad():
        assert not torch.allclose(everywhere(x), out, atol=1e-4)  # the restriction matters


@pytest.mark.parametrize("mode", ["embedded_gaussian", "concatenation"])
@pytest.mark.parametrize("attend", ["space", "time", "spacetime"])
def test_attention_map_of_a_restricted_block_is_the_formulas_row(mode, attend):
    block = _block(mode, attend=attend)
    x = _input()
    queries = [(0, 0, 0), (3, 2, 5), (1, 3, 1)]
    with torch.no_grad():
        got = block.attention_map(x, queries)  # (B, Q, T', H', W')
    want = reference_weights(block, x)  # (B, N, M)
    h, w = x.shape[3:]
    for q, (qt, qh, qw) in enumerate(queries):
        row = want[:, qt * h * w + qh * w + qw]
        torch.testing.assert_close(got[:, q].flatten(1).double(), row, atol=1e-6, rtol=1e-5)
        support = (row != 0).sum(dim=1)
        if attend == "space":
            assert (support <= 2 * 3).all()  # one frame of the 2 x 3 key grid
        if attend == "time":
            assert (support <= 4).all()  # one key cell over 4 frames


@pytest.mark.parametrize("attend", ["space", "time"])
def test_attend_trains_and_is_the_identity_at_init(attend):
    block = NonLocalBlock(6, 4, attend=attend).train()
    x = _input(size=(4, 8, 8)).requires_grad_()
    y = block(x)
    assert torch.equal(y, x)
    y.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_attend_never_builds_n_by_m():
    from ops.test_pairwise import _MaxNumel

    x = torch.randn(1, 6, 16, 32, 32)  # N = 16384 queries
    for attend in ("space", "time"):
        block = NonLocalBlock(6, 4, attend=attend, sub_sample=False).eval()
        with _MaxNumel() as probe, torch.no_grad():
            block(x)
        # space: per frame 1024 x 1024; time: per position 16 x 16; never 16384 x 16384
        assert probe.max_numel < 16384 * 16384 // 16, (attend, probe.op, probe.max_numel)


def test_attend_errors():
    with pytest.raises(ValueError, match="unknown attend 'frame'"):
        NonLocalBlock(6, attend="frame")
    with pytest.raises(ValueError, match="attend='space' needs dim=3"):
        NonLocalBlock(6, dim=2, attend="space")
    with pytest.raises(ValueError, match="cannot be combined"):
        NonLocalBlock(6, attend="time", temporal_group=2)
    with pytest.raises(ValueError, match="temporal pool kernel must be 1"):
        NonLocalBlock(6, attend="space", pool_kernel=(2, 2, 2))(torch.randn(1, 6, 4, 4, 4))
    with pytest.raises(ValueError, match=r"needs H and W divisible by it, got 5 x 6"):
        NonLocalBlock(6, attend="time")(torch.randn(1, 6, 4, 5, 6))
    assert "attend='time'" in repr(NonLocalBlock(6, attend="time"))


@pytest.mark.slow
@pytest.mark.parametrize("attend", ["space", "time"])
def test_restricted_blocks_export_to_onnx_with_dynamic_batch_and_time(attend, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    block = _block("embedded_gaussian", attend=attend)
    x = _input()
    path = tmp_path / f"{attend}.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("time")}
    torch.onnx.export(block, (x,), str(path), dynamo=True, dynamic_shapes=(dims,))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, _input(size=(6, 4, 6), batch=3, seed=2)):
        (out,) = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), block(inp), atol=1e-5, rtol=1e-5)
