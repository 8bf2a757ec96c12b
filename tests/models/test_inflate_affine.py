"""Issue 17 item 15: inflating BatchNorm 2D weights (torchvision or Caffe2 names) into
``backbone_norm="affine"`` models folds the statistics into scale and shift."""

import pytest
import torch
from reference import randomise

from nonlocalnet import build_model, inflate_2d_to_3d
from nonlocalnet.models.caffe2 import torch_to_caffe2_name


def _bn_2d_state(seed=0):
    """A 2D ResNet-50 state dict in torchvision's format (1000 classes, with num_batches_tracked),
    random weights and statistics far from 0 / 1."""
    c2d = build_model("c2d_r50", num_classes=1000)
    randomise(c2d, seed=seed)
    state = {}
    for k, v in c2d.state_dict().items():
        v = v[:, :, 0] if v.dim() == 5 else v  # C2D kernels are 1 x k x k
        if k.endswith("running_var"):
            v = v * 3.0  # variances in [1.5, 4.5]: the fold visibly rescales
        elif k.endswith("running_mean"):
            v = v * 5.0
        state[k] = v.clone().double() if v.is_floating_point() else v.clone()
    return state


@pytest.mark.parametrize("arch", ["i3d_r50", "i3d_nl5_r50"])
def test_inflated_affine_model_equals_inflated_bn_model(arch):
    state = _bn_2d_state()
    bn = build_model(arch, num_classes=1000).double()
    affine = build_model(arch, num_classes=1000, backbone_norm="affine").double()
    inflate_2d_to_3d(bn, state)
    report = inflate_2d_to_3d(affine, state)
    assert "bn1" in report.folded and "layer4.2.bn3" in report.folded
    assert "layer1.0.downsample.1" in report.folded and len(report.folded) == 53
    assert "folded" in report.summary()
    x = torch.randn(2, 3, 8, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = bn.eval()(x)
        out = affine.eval()(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    # Caffe2 2D names (s/b/rm/riv) fold to the same affine model
    caffe2 = {torch_to_caffe2_name(k): v.numpy() for k, v in state.items() if torch_to_caffe2_name(k)}
    again = build_model(arch, num_classes=1000, backbone_norm="affine").double()
    inflate_2d_to_3d(again, caffe2)
    for key, value in affine.state_dict().items():
        if ".nl." not in key:
            assert torch.equal(again.state_dict()[key], value), key


def test_affine_only_2d_state_still_copies_into_affine_model():
    state = {k: v for k, v in _bn_2d_state(seed=1).items() if not k.endswith(("running_mean", "running_var"))}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = build_model("i3d_r50", num_classes=1000, backbone_norm="affine").double()
    report = inflate_2d_to_3d(model, state)
    assert report.folded == []
    assert torch.equal(model.bn1.weight, state["bn1.weight"])


def test_half_statistics_are_refused():
    state = _bn_2d_state(seed=2)
    del state["layer2.0.bn2.running_var"]
    model = build_model("i3d_r50", num_classes=1000, backbone_norm="affine")
    before = model.layer2[0].bn2.weight.clone()
    with pytest.raises(ValueError, match=r"layer2\.0\.bn2\.running_mean without running_var"):
        inflate_2d_to_3d(model, state)
    assert torch.equal(model.layer2[0].bn2.weight, before)
    # into a BatchNorm model the lone statistic is not completed with a default either
    with pytest.raises(ValueError, match=r"missing layer2\.0\.bn2\.running_var"):
        inflate_2d_to_3d(build_model("i3d_r50", num_classes=1000), state)
    with pytest.raises(ValueError, match="bn_eps must be a finite float >= 0"):
        inflate_2d_to_3d(model, state, bn_eps=-1.0)
