"""ONNX export and torch.compile of whole models (tens of seconds: marked slow, run in CI)."""

import pytest
import torch

from nonlocalnet import MODES, NonLocalBlock, build_model
from nonlocalnet.models import StageSpec, VideoResNet, VideoResNetSpec

_DYNAMIC = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("time")},)


def _run_and_compare(ort, path, model, inputs):
    """The exported graph keeps batch and time symbolic and matches ``model`` at every input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and isinstance(shape[2], str), f"fixed input shape {shape}"
    for x in inputs:
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = model(x)
        # float32 rounding grows with the outputs' scale (dot-product logits reach ~100)
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.slow
def test_onnx_export_of_c2d_nl_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = build_model("c2d_nl5_r50", num_classes=10, variant="released").eval()
    for m in model.modules():  # make the non-local blocks do something (they start as identity)
        if isinstance(m, NonLocalBlock) and isinstance(m.norm, torch.nn.BatchNorm3d):
            torch.nn.init.constant_(m.norm.weight, 0.5)
    x = torch.randn(2, 3, 8, 64, 64)
    path = tmp_path / "c2d_nl.onnx"
    # Exported without torch.no_grad(): the parameters require grad (the case whose chunked
    # softmax used to fix the batch to the example's 2 and fail a batch of 3).
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=_DYNAMIC)
    _run_and_compare(ort, path, model, (x, torch.randn(3, 3, 12, 64, 64), torch.randn(1, 3, 16, 64, 64)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_onnx_export_of_a_tiny_video_resnet_keeps_batch_and_time_dynamic(mode, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    spec = VideoResNetSpec(
        stages=(
            StageSpec(1, 4, 1, (3,), (1,), nonlocal_after=(0,)),
            StageSpec(1, 4, 2, (1,), (1,), nonlocal_after=(0,)),
        ),
        conv1_temporal=3,
        conv1_temporal_stride=1,
        pool1_temporal=1,
        pool1_temporal_stride=1,
        pool2_temporal=0,
        stem_width=8,
        nonlocal_options={"mode": mode, "use_scale": True},
    )
    torch.manual_seed(0)
    model = VideoResNet(spec, num_classes=5, dropout=0.0).eval()
    for m in model.modules():  # make the non-local blocks do something (they start as identity)
        if isinstance(m, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x = torch.randn(2, 3, 4, 32, 32)
    path = tmp_path / f"{mode}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=_DYNAMIC)
    _run_and_compare(ort, path, model, (x, torch.randn(3, 3, 6, 32, 32), torch.randn(1, 3, 3, 32, 32)))


@pytest.mark.slow
def test_torch_compile_of_a_small_video_resnet():
    spec = VideoResNetSpec(
        stages=(
            StageSpec(1, 8, 1, (3,), (1,)),
            StageSpec(2, 8, 2, (1, 3), (1, 1), nonlocal_after=(0,)),
        ),
        conv1_temporal=5,
        nonlocal_options={"mode": "embedded_gaussian", "norm": "none"},
    )
    model = VideoResNet(spec, num_classes=4, dropout=0.0)
    x = torch.randn(2, 3, 8, 32, 32)
    ref = model(x)
    ref.sum().backward()
    ref_grad = model.conv1.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.conv1.weight.grad, ref_grad, atol=1e-3, rtol=1e-3)
