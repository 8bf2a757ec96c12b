import pytest
import torch

from nonlocalnet import NonLocalBlock, build_model, list_models
from nonlocalnet.models import measure_complexity, model_info, model_spec

# the paper's Table 1: T x H x W after each stage, 32-frame input 32x224x224
EXPECTED_32 = {
    "pool1": (8, 56, 56),
    "res2": (8, 56, 56),
    "res3": (4, 28, 28),
    "res4": (4, 14, 14),
    "res5": (4, 7, 7),
}
CHANNELS = {"pool1": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


@pytest.mark.parametrize("name", list_models("video"))
@pytest.mark.parametrize("variant", ["paper", "released"])
def test_stage_shapes_of_every_model(name, variant):
    """Full-size geometry on the meta device: no memory, no compute."""
    frames = model_info(name).frames
    with torch.device("meta"):
        model = build_model(name, variant=variant).eval()
        x = torch.empty(2, 3, frames, 224, 224)
        outs = model.stage_outputs(x)
        logits = model(x)
    for stage, (t, h, w) in EXPECTED_32.items():
        if variant == "released" and stage in ("pool1", "res2"):
            h = w = 55  # Caffe2's pool1 has no padding (pads=0)
        assert tuple(outs[stage].shape) == (2, CHANNELS[stage], t, h, w), (stage, outs[stage].shape)
    assert tuple(logits.shape) == (2, 400)


def test_released_pool1_has_no_padding_and_it_changes_activations():
    """The released code's pool1 (Caffe2 ``pads=0``) gives res2 55x55 at 224 and other values; the
    paper's (and torchvision's) padding 1 gives 56x56."""
    torch.manual_seed(0)
    paper = build_model("c2d_r50_8x8", num_classes=5).eval()
    released = build_model("c2d_r50_8x8", num_classes=5, variant="released").eval()
    assert (model_spec("c2d_r50").pool1_padding, model_spec("c2d_r50", variant="released").pool1_padding) == (
        1,
        0,
    )
    released.load_state_dict(paper.state_dict(), strict=False)  # same weights (blocks differ in init only)
    x = torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        a, b = paper.stage_outputs(x), released.stage_outputs(x)
    assert a["res2"].shape[-2:] == (16, 16) and b["res2"].shape[-2:] == (15, 15)
    # with padding 0 the window at output (i, j) starts at 2i; with padding 1 at 2i - 1: shifted
    assert not torch.allclose(a["pool1"][..., 1:, 1:][..., :15, :15], b["pool1"])
    assert released.res5_size(224) == paper.res5_size(224) == 7
    assert [released.res5_size(s) for s in (64, 65, 66, 97)] == [
        b2.shape[-1]
        for b2 in (released.stage_outputs(torch.randn(1, 3, 2, s, s))["res5"] for s in (64, 65, 66, 97))
    ]
    with pytest.raises(ValueError, match="pool1_padding must be 0 or 1"):
        build_model("c2d_r50", pool1_padding=2)


def test_conv_kernels_follow_the_released_rules():
    i3d = model_spec("i3d_r50")
    assert [s.temporal_a for s in i3d.stages] == [(3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1)]
    assert all(k == 1 for s in i3d.stages for k in s.temporal_b)
    assert i3d.conv1_temporal == 5
    r101 = model_spec("i3d_r101")
    assert r101.stages[2].temporal_a == tuple(3 if i % 2 == 0 else 1 for i in range(23))
    i333 = model_spec("i3d3x3x3_r50")
    assert [s.temporal_b for s in i333.stages] == [s.temporal_a for s in i3d.stages]
    assert all(k == 1 for s in i333.stages for k in s.temporal_a)
    c2d = model_spec("c2d_r50")
    assert c2d.conv1_temporal == 1 and all(k == 1 for s in c2d.stages for k in s.temporal_a + s.temporal_b)
    assert (c2d.pool1_temporal, c2d.pool2_temporal) == (3, 3)
    released = model_spec("c2d_r50", variant="released")
    assert (released.pool1_temporal, released.pool2_temporal) == (2, 2)
    fast = model_spec("i3d_r50_8x8")
    assert (fast.conv1_temporal_stride, fast.pool1_temporal, fast.pool1_temporal_stride) == (1, 1, 1)


def _nl_names(name, **kw):
    with torch.device("meta"):
        model = build_model(name, **kw)
    return [n for n, m in model.named_modules() if isinstance(m, NonLocalBlock)]


def test_nonlocal_placements():
    assert _nl_names("c2d_r50") == []
    assert _nl_names("c2d_nl1_r50") == ["layer3.4.nl"]  # before the last res4 block
    assert _nl_names("c2d_nl1_r101") == ["layer3.21.nl"]
    assert _nl_names("i3d_nl5_r50") == [
        "layer2.1.nl",
        "layer2.3.nl",
        "layer3.1.nl",
        "layer3.3.nl",
        "layer3.5.nl",
    ]
    assert _nl_names("c2d_nl5_r101") == [
        "layer2.1.nl",
        "layer2.3.nl",
        "layer3.6.nl",
        "layer3.13.nl",
        "layer3.20.nl",
    ]
    ten = _nl_names("c2d_nl10_r50")
    assert ten == [f"layer2.{i}.nl" for i in range(4)] + [f"layer3.{i}.nl" for i in range(6)]


def test_nonlocal_options_reach_the_blocks():
    with torch.device("meta"):
        model = build_model(
            "c2d_nl5_r50",
            variant="released",
            nonlocal_options={"mode": "dot_product", "bias": False},
        )
    blocks = [m for m in model.modules() if isinstance(m, NonLocalBlock)]
    assert all(b.mode == "dot_product" and b.g.bias is None for b in blocks)
    # the released code scales under its softmax only: its dot product is unscaled (issue 14)
    assert all(b.pool_before_conv and not b.use_scale and b.options.init == "normal" for b in blocks)
    with torch.device("meta"):
        paper = build_model("c2d_nl1_r50")
    (block,) = [m for m in paper.modules() if isinstance(m, NonLocalBlock)]
    assert not block.pool_before_conv and not block.use_scale and block.mode == "embedded_gaussian"
    assert block.in_channels == 1024 and block.inter_channels == 512


def test_small_forward_backward_and_dense_head():
    model = build_model("i3d_nl5_r50", num_classes=7)
    x = torch.randn(2, 3, 8, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.layer2[1].nl.theta.weight.grad is not None
    model.eval()
    with torch.no_grad():
        dense = model.forward_dense(x)
        assert dense.shape == (2, 7, 1, 1)
        torch.testing.assert_close(dense.flatten(1), model(x), atol=1e-5, rtol=1e-4)
        probs = model.fully_convolutional_scores(torch.randn(1, 3, 8, 96, 128), window=2)  # larger frames
        torch.testing.assert_close(probs.sum(1), torch.ones(1))
        torch.testing.assert_close(model.pooled_features(x).shape, torch.Size([2, 2048]))


def test_channels_last_3d_gives_the_same_output():
    model = build_model("c2d_nl5_r50", num_classes=5).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_stride_on_1x1_keeps_shapes_and_weights():
    with torch.device("meta"):
        a, b = build_model("c2d_r50"), build_model("c2d_r50", stride_on_1x1=True)
        assert {k: v.shape for k, v in a.state_dict().items()} == {
            k: v.shape for k, v in b.state_dict().items()
        }
        assert b(torch.empty(1, 3, 32, 224, 224)).shape == (1, 400)
    assert b.layer2[0].conv1.stride == (1, 2, 2) and b.layer2[0].conv2.stride == (1, 1, 1)


def test_complexity_of_c2d_r101_matches_the_paper():
    """Paper Table 2e: R101 C2D 43.2M parameters, 34.2 GFLOPs at 32x224x224 (see docs/models.md for the
    stride placement that explains the FLOP difference)."""
    with torch.device("meta"):
        c = measure_complexity(build_model("c2d_r101"))
        s1 = measure_complexity(build_model("c2d_r101", stride_on_1x1=True))
    assert abs(c.params / 43.2e6 - 1) < 0.01
    assert abs(s1.gmacs / 34.2 - 1) < 0.01
    assert 0.03 < c.gmacs / 34.2 - 1 < 0.04


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "c2d_r18"}, "unknown model 'c2d_r18'.*Valid names: c2d_nl10_r50"),
        ({"name": "c2d_nl5_r5O"}, "did you mean c2d_nl5_r50"),
        ({"name": "c2d_nl10_r101"}, "unknown model 'c2d_nl10_r101'"),
        ({"name": "c2d_r50", "variant": "caffe"}, "unknown variant 'caffe'; expected one of"),
        ({"name": "c2d_r50", "nonlocal_options": {"mode": "cosine"}}, "unknown mode 'cosine'"),
        ({"name": "c2d_r50", "pool3_temporal": 2}, r"unknown override\(s\) \['pool3_temporal'\].*valid keys"),
        (
            {"name": "c2d_nl1_r50", "nonlocal_options": {"heads": 2}},
            r"unknown non-local block option\(s\) \['heads'\]",
        ),
        ({"name": "c2d_r50", "num_classes": 0}, "num_classes must be a positive int"),
        ({"name": "c2d_r50", "temporal_padding": "reflect"}, "unknown temporal_padding"),
    ],
)
def test_bad_names_and_overrides(kwargs, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        build_model(**kwargs)


def test_bad_input_to_model():
    with torch.device("meta"):
        model = build_model("c2d_r50")
    with pytest.raises(
        ValueError, match=r"expected a clip of shape \(B, 3, T, H, W\), got \(1, 3, 224, 224\)"
    ):
        model(torch.empty(1, 3, 224, 224, device="meta"))


def test_choose_memory_format_keeps_outputs():
    from nonlocalnet.tasks.video import choose_memory_format

    model = build_model("c2d_nl1_r50", num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model(x)
    model.train()
    fmt = choose_memory_format(model, x, repeats=1)
    assert fmt in (torch.contiguous_format, torch.channels_last_3d) and model.training
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x.contiguous(memory_format=fmt)), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="5-D example clip"):
        choose_memory_format(model, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "name,params_ratio,flops_ratio",
    [("i3d3x3x3_r101", 1.5, 1.8), ("i3d_r101", 1.2, 1.5), ("c2d_nl5_r101", 1.2, 1.2)],
)
def test_complexity_ratios_round_to_the_papers(name, params_ratio, flops_ratio):
    """Table 2e gives ratios to one decimal; the released block (pooling before the phi/g convs)
    is the one whose FLOPs match (the paper's pool-after block gives 1.3x)."""
    with torch.device("meta"):
        base = measure_complexity(build_model("c2d_r101", variant="released"))
        model = measure_complexity(build_model(name, variant="released"))
        paper_block = measure_complexity(build_model("c2d_nl5_r101"))
    assert round(model.params / base.params, 1) == params_ratio
    assert round(model.gmacs / base.gmacs, 1) == flops_ratio
    assert round(paper_block.gmacs / base.gmacs, 1) == 1.3


def test_one_registry_with_its_info_and_a_decorator_to_add_a_model():
    from nonlocalnet.models import ModelInfo, register_model
    from nonlocalnet.models.registry import _REGISTRY

    info = model_info("i3d_nl5_r50")
    assert (info.kind, info.arch, info.depth, info.nonlocal_blocks) == ("video", "i3d", 50, 5)
    assert (info.frames, info.sample_rate, info.paper) == (32, 2, {"top1": 74.9, "top5": 91.6})
    assert model_info("i3d_nl5_r50_8x8").paper == {}  # the paper reports the 32-frame models
    assert set(list_models("video")) <= set(list_models())
    with pytest.raises(ValueError, match="unknown model kind 'image'"):
        list_models("image")
    with pytest.raises(ValueError, match="'c2d_r50' is a video model, not a detector model"):
        model_info("c2d_r50", "detector")

    @register_model(ModelInfo("tiny_test_net", "video", "c2d", None, 0))
    def tiny_test_net(num_classes=3):
        return torch.nn.Linear(2, num_classes)

    try:
        assert "tiny_test_net" in list_models("video") and model_info("tiny_test_net").arch == "c2d"
        assert build_model("tiny_test_net", num_classes=4).out_features == 4
        with pytest.raises(ValueError, match="model 'tiny_test_net' is already registered"):
            register_model(ModelInfo("tiny_test_net", "video", "c2d", None, 0), tiny_test_net)
    finally:
        del _REGISTRY["tiny_test_net"]


def test_a_detector_name_without_the_detection_package_says_to_import_it():
    import subprocess
    import sys

    code = "from nonlocalnet.models import build_model\nbuild_model('maskrcnn_r50_fpn_nl')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert (
        "registered by importing nonlocalnet.detection (pip install 'nonlocalnet[detection]')" in run.stderr
    )


def test_a_nonlocal_options_value_replaces_the_variants_block_and_a_mapping_overrides_it():
    from nonlocalnet import NonLocalOptions

    whole = NonLocalOptions(mode="dot_product")
    assert model_spec("c2d_nl1_r50", variant="released", nonlocal_options=whole).nonlocal_options == whole
    over = model_spec("c2d_nl1_r50", variant="released", nonlocal_options={"mode": "dot_product"})
    assert over.nonlocal_options == NonLocalOptions.released(mode="dot_product")
    affine = model_spec("c2d_nl1_r50", variant="released", backbone_norm="affine")
    assert affine.nonlocal_options == NonLocalOptions.released(norm="none")
