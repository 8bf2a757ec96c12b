import pytest
import torch
from reference import randomise
from torch import nn

from nonlocalnet import NonLocalBlock, add_nonlocal, build_model, inflate_2d_to_3d
from nonlocalnet.models.caffe2 import torch_to_caffe2_name


class Bottleneck2d(nn.Module):
    """A torchvision-style 2D bottleneck (same names), for tests without torchvision."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(width * 4))
            if stride != 1 or cin != width * 4
            else None
        )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + idt)


class TinyResNet2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Bottleneck2d(8, 4), Bottleneck2d(16, 4))
        self.layer2 = nn.Sequential(Bottleneck2d(16, 8, stride=2), Bottleneck2d(32, 8))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def test_add_nonlocal_into_a_2d_network_keeps_outputs_and_keys():
    net = TinyResNet2d()
    randomise(net, seed=3)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    before = net(x)
    keys = set(net.state_dict())
    blocks = add_nonlocal(net, after=["layer1.1", "layer2"], mode="dot_product")
    assert [(b.in_channels, b.dim, b.mode) for b in blocks] == [
        (16, 2, "dot_product"),
        (32, 2, "dot_product"),
    ]
    assert keys < set(net.state_dict())  # every old key is still there, unchanged
    assert "layer1.1.nl.theta.weight" in net.state_dict() and "layer2.nl.g.weight" in net.state_dict()
    torch.testing.assert_close(net(x), before)  # identity at init
    # the blocks really run: perturbing them changes the output
    for b in blocks:
        randomise(b, seed=5)
    assert not torch.allclose(net.eval()(x), before)
    # a second copy of the network (deepcopy) keeps working on its own blocks
    import copy

    twin = copy.deepcopy(net)
    torch.testing.assert_close(twin(x), net(x))


def test_add_nonlocal_into_our_backbone_and_errors():
    model = build_model("c2d_r50", num_classes=3).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        before = model(x)
        (block,) = add_nonlocal(model, after=["layer3.4"], sub_sample=False)
        torch.testing.assert_close(model(x), before)
    assert isinstance(model.layer3[4].nl, NonLocalBlock) and block.in_channels == 1024
    with pytest.raises(ValueError, match="already has a non-local block"):
        add_nonlocal(model, after=["layer3.4"])
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        add_nonlocal(model, after=["layer9"])
    with pytest.raises(ValueError, match="cannot infer the output channels of 'relu'"):
        add_nonlocal(model, after=["relu"])
    with pytest.raises(TypeError, match="list of module names"):
        add_nonlocal(model, after="layer3.4")


def _random_2d_state(seed=0):
    """A 2D ResNet-50 state dict in torchvision's format (1000 classes), with random values."""
    c2d = build_model("c2d_r50", num_classes=1000)
    randomise(c2d, seed=seed)
    state = {}
    for k, v in c2d.state_dict().items():
        if v.dim() == 5:
            v = v[:, :, 0]  # C2D kernels are 1 x k x k
        state[k] = v.clone()
    state["bn1.running_var"] = state["bn1.running_var"].abs() + 0.5
    return {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}


@pytest.mark.parametrize("arch", ["i3d_r50", "i3d3x3x3_r50", "i3d_nl5_r50"])
def test_inflated_i3d_equals_c2d_on_a_static_video(arch):
    """The defining property: for a video whose frames are all the same, inflated kernels
    (repeated over time, divided by T) give the 2D network's activations."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in _random_2d_state().items()}
    # float64 throughout, so that w / T summed T times is w to 1e-16, not to float32's 1e-7
    c2d = build_model("c2d_r50", num_classes=1000).double()
    i3d = build_model(arch, num_classes=1000, temporal_padding="replicate").double()
    rep_c = inflate_2d_to_3d(c2d, state)
    rep_i = inflate_2d_to_3d(i3d, state)
    assert rep_c.inflated == [] and len(rep_i.inflated) == 10 and "conv1.weight" in rep_i.inflated
    frame = torch.randn(1, 3, 1, 64, 64, dtype=torch.float64)
    video = frame.expand(-1, -1, 8, -1, -1).contiguous()
    c2d, i3d = c2d.double().eval(), i3d.double().eval()
    with torch.no_grad():
        ref = c2d(video)
        torch.testing.assert_close(i3d(video), ref, atol=1e-9 * ref.abs().max().item(), rtol=1e-9)
        moving = torch.randn(1, 3, 8, 64, 64, dtype=torch.float64)
        assert not torch.allclose(i3d(moving), c2d(moving), rtol=1e-3)
    # with zero temporal padding only the border frames differ: the logits do
    zeros = build_model(arch, num_classes=1000).double()
    inflate_2d_to_3d(zeros, state)
    with torch.no_grad():
        assert not torch.allclose(zeros.double().eval()(video), ref, rtol=1e-3)


def test_inflation_from_caffe2_2d_names_equals_torchvision_names():
    state = _random_2d_state(seed=1)
    caffe2_state = {torch_to_caffe2_name(k): v.numpy() for k, v in state.items() if torch_to_caffe2_name(k)}
    assert "res2_0_branch2a_w" in caffe2_state and "res_conv1_bn_riv" in caffe2_state
    a, b = build_model("i3d_r50", num_classes=1000), build_model("i3d_r50", num_classes=1000)
    inflate_2d_to_3d(a, state)
    inflate_2d_to_3d(b, caffe2_state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_inflation_reports_and_refuses():
    state = _random_2d_state()
    model = build_model("i3d_nl1_r50")  # 400 classes: the ImageNet head does not fit
    report = inflate_2d_to_3d(model, state)
    assert any(s.startswith("fc.weight") for s in report.skipped)
    assert "layer3.4.nl.theta.weight" in report.kept
    broken = dict(state)
    del broken["layer2.0.conv2.weight"]
    broken["layer9.0.conv1.weight"] = torch.zeros(1)
    before = model.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"missing layer2\.0\.conv2\.weight.*unexpected layer9"):
        inflate_2d_to_3d(build_model("i3d_r50"), broken)
    assert torch.equal(model.conv1.weight, before)
    affine = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}
    rep = inflate_2d_to_3d(build_model("c2d_r50"), affine)
    assert "bn1.running_var" in rep.defaulted
