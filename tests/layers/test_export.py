"""torch.compile and ONNX export of the block (seconds each: marked slow, still run in CI)."""

import pytest
import torch
from reference import randomise

from nonlocalnet import MODES, NonLocalBlock
from nonlocalnet.layers import PROJECTIONS


def _block(mode, **kw):
    block = NonLocalBlock(8, mode=mode, **kw)
    randomise(block)
    return block


@pytest.mark.slow
@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_forward_backward(mode, projection):
    block = _block(mode, projection=projection).train()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 8, 4, 6, 6, requires_grad=True)
    y_ref = block(x)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    y = compiled(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("mode", MODES)
def test_onnx_export_matches_onnxruntime(mode, projection, tmp_path):
    """Exported with a dynamic batch and time and without ``torch.no_grad()`` (the parameters
    require grad, which used to select the chunked softmax whose Python loop fixed the sizes),
    the graph runs at other batch sizes and clip lengths and matches the block."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    block = _block(mode, pool_before_conv=mode == "dot_product", use_scale=True, projection=projection).eval()
    x = torch.randn(2, 8, 4, 6, 6)
    path = tmp_path / f"{mode}.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("time")}
    torch.onnx.export(block, (x,), str(path), dynamo=True, dynamic_shapes=(dims,))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and isinstance(shape[2], str), shape
    for inp in (x, torch.randn(3, 8, 6, 6, 6) * 3, torch.randn(1, 8, 2, 6, 6), torch.randn(4, 8, 1, 6, 6)):
        (out,) = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), block(inp), atol=1e-5, rtol=1e-5)
