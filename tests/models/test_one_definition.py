"""One definition per option: the norm names (``layers.norm``), the non-local attribute name
(``NONLOCAL_ATTR``), the low-precision dtypes and the algorithm check (``ops``)."""

import pytest
import torch
from reference import randomise
from torch import nn

from nonlocalnet import NonLocalBlock
from nonlocalnet.layers import AffineChannel
from nonlocalnet.layers.norm import BATCHNORMS, NORMS, create_norm
from nonlocalnet.models import add_nonlocal, build_model, model_spec
from nonlocalnet.models.caffe2 import caffe2_to_torch_name
from nonlocalnet.models.insert import NONLOCAL_ATTR
from nonlocalnet.models.resnet3d import BACKBONE_NORMS
from nonlocalnet.ops import ALGORITHMS, LOW_PRECISION, check_algorithm


def test_norm_names_have_one_home():
    assert set(BACKBONE_NORMS) < set(NORMS)
    for kind in NORMS:
        layer = create_norm(kind, 4, dim=3)
        assert (
            type(layer).__name__
            == {
                "batchnorm": "BatchNorm3d",
                "affine": "AffineChannel",
                "none": "Identity",
                "groupnorm": "GroupNorm",
            }[kind]
        )
    with pytest.raises(
        ValueError,
        match=r"unknown norm 'layernorm'; expected one of \('batchnorm', 'affine', 'none', 'groupnorm'\)",
    ):
        NonLocalBlock(8, norm="layernorm")
    with pytest.raises(
        ValueError,
        match=rf"unknown backbone_norm 'none'; expected one of {BACKBONE_NORMS!r}".replace(
            "(", r"\("
        ).replace(")", r"\)"),
    ):
        model_spec("c2d_r50_8x8", backbone_norm="none")


def test_video_resnet_backbone_norm_is_the_specs():
    model = build_model("c2d_r50_8x8", num_classes=3, backbone_norm="affine")
    assert model.backbone_norm == model.spec.backbone_norm == "affine"
    assert isinstance(model.bn1, AffineChannel)


def test_insert_infers_dims_from_the_batchnorm_table():
    for dim, bn in BATCHNORMS.items():
        net = nn.Sequential(nn.Sequential(bn(6)))
        (block,) = add_nonlocal(net, ["0"])
        assert block.dim == dim and block.in_channels == 6
        assert getattr(net[0], NONLOCAL_ATTR) is block


def test_init_weights_skips_blocks_by_type_not_name():
    """A block attached under another name keeps its own initialisation (identity)."""
    model = build_model("c2d_r50_8x8", num_classes=3)
    extra = NonLocalBlock(256)
    randomise(extra)
    before = {k: v.clone() for k, v in extra.state_dict().items()}
    model.layer1.add_module("extra", extra)
    model._init_weights()
    for key, value in extra.state_dict().items():
        assert torch.equal(value, before[key]), key
    blocks = [m for n, m in model.named_modules() if n.endswith(f".{NONLOCAL_ATTR}")]
    assert all(isinstance(b, NonLocalBlock) for b in blocks)


def test_nonlocal_attr_names_the_caffe2_keys():
    assert caffe2_to_torch_name("nonlocal_conv3_1_theta_w") == f"layer2.1.{NONLOCAL_ATTR}.theta.weight"
    assert caffe2_to_torch_name("nonlocal_conv4_5_bn_riv") == f"layer3.5.{NONLOCAL_ATTR}.norm.running_var"


def test_ops_share_the_algorithm_check_and_dtypes():
    assert LOW_PRECISION == (torch.float16, torch.bfloat16)
    for mode, algorithms in ALGORITHMS.items():
        for algorithm in algorithms:
            check_algorithm(mode, algorithm)
    with pytest.raises(ValueError, match="unknown algorithm 'sorted' for mode 'dot_product'") as ops_err:
        check_algorithm("dot_product", "sorted")
    with pytest.raises(ValueError) as block_err:
        NonLocalBlock(8, mode="dot_product", algorithm="sorted")
    assert str(block_err.value) == str(ops_err.value)
    with pytest.raises(ValueError, match="unknown mode 'softmax'; expected one of"):
        check_algorithm("softmax", "auto")
