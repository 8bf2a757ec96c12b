"""The detectors of ``nonlocalnet.detection.models``: the registry, torchvision's state-dict keys
plus the blocks' (checked against torchvision's own builders), torchvision-format detector and
ImageNet files loading with only the blocks missing, outputs equal to the plain torchvision model
at initialisation (float64, every norm option), the paper's block positions, torchvision's
``trainable_backbone_layers``/FrozenBatchNorm conventions, whole-model pickling and deepcopy,
torch.compile and ONNX export (slow), and the errors.

Key and freezing comparisons build on the meta device (no weights initialised: fast); output
comparisons run on CPU with small images."""

from __future__ import annotations

import copy
import functools
import logging
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from torchvision.models import resnet50
from torchvision.models.detection import (
    FasterRCNN,
    KeypointRCNN,
    MaskRCNN,
    fasterrcnn_resnet50_fpn,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from nonlocalnet.detection.models import (
    DETECTOR_BLOCK,
    build_detector,
    load_detector_weights,
    nonlocal_blocks,
)
from nonlocalnet.errors import InvalidValueError, MissingFileError
from nonlocalnet.layers import NonLocalBlock, NonLocalOptions
from nonlocalnet.layers.affine import AffineChannel
from nonlocalnet.models import build_model, list_models, model_info

NAME = re.compile(r"(maskrcnn|fasterrcnn|keypointrcnn)_(r50|r101|r18|tiny)_fpn(_nl)?(_nlhead)?")
BODY_BLOCK = {"r50": "layer3.4", "r101": "layer3.21", "r18": "layer3.0", "tiny": "layer3.0"}
LAYER3_CHANNELS = {"r50": 1024, "r101": 1024, "r18": 256, "tiny": 64}
REQUIRED = [
    "maskrcnn_r50_fpn",
    "maskrcnn_r50_fpn_nl",
    "maskrcnn_r101_fpn",
    "maskrcnn_r101_fpn_nl",
    "fasterrcnn_r50_fpn_nl",
    "keypointrcnn_r50_fpn",
    "keypointrcnn_r50_fpn_nl",
    "keypointrcnn_r50_fpn_nlhead",
    "keypointrcnn_r50_fpn_nl_nlhead",
    "keypointrcnn_r101_fpn_nl_nlhead",
    "maskrcnn_r18_fpn_nl",
    "maskrcnn_tiny_fpn",
    "maskrcnn_tiny_fpn_nl",
    "keypointrcnn_tiny_fpn_nl_nlhead",
]
SMALL_NAMES = [n for n in list_models("detector") if "_tiny_" in n or "_r18_" in n]
# Small, fast and deterministic: every proposal kept (no score threshold, no class NMS), few detections.
SMALL_R50 = {
    "min_size": 64,
    "max_size": 96,
    "box_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 3,
}
TINY_RUN = {
    "min_size": 64,
    "max_size": 96,
    "box_score_thresh": 0.0,
    "box_detections_per_img": 8,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
}
F64 = {"rtol": 1e-9, "atol": 1e-9}
META_LOAD = "ignore:.*copying from a non-meta parameter"  # load_state_dict into a meta model: a no-op


def parse(name: str) -> tuple[str, str, bool, bool]:
    m = NAME.fullmatch(name)
    assert m, name
    return m[1], m[2], bool(m[3]), bool(m[4])


def expected_blocks(name: str) -> set[str]:
    _, backbone, nl, nlhead = parse(name)
    out = {f"backbone.body.{BODY_BLOCK[backbone]}.nl"} if nl else set()
    if nlhead:
        out |= {f"roi_heads.keypoint_head.{i}.nl" for i in ((3, 7) if backbone == "tiny" else (3, 7, 11, 15))}
    return out


def is_nl_key(key: str) -> bool:
    return ".nl." in key


def image(h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomise_norms(model: nn.Module, seed: int = 1) -> None:
    """Random BN statistics, scales and shifts (they start as the identity: eps and BN would not show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.weight.shape[0]
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.4)  # < 1: no blow-up over 50 layers
                m.bias.copy_(torch.randn(n, generator=g) * 0.05)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.05)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)


def perturb(block: nn.Module, seed: int = 2) -> None:
    """Make a block do something (it starts as the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


def detect(model: nn.Module, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(images)[0]


def assert_same_detections(got: dict, want: dict, **tol) -> None:
    assert set(got) == set(want)
    assert len(want["boxes"]) > 0, "no detections: the comparison would be empty"
    for key in want:
        torch.testing.assert_close(got[key], want[key], **tol, msg=lambda m, k=key: f"{k}: {m}")


def light_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the same keys, shapes and dtypes whose file is a few kB (zeros, stride 0)."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in state.items()}


def count_calls(modules) -> list[int]:
    calls = [0] * len(modules)
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@functools.cache
def reference_state(arch: str, backbone: str) -> dict[str, torch.Size]:
    """Keys and shapes of the plain model: torchvision's own builder (R50), torchvision's
    ``resnet_fpn_backbone`` + the model class (R101, R18, as models.py builds them: BatchNorm2d
    without weights, layer1-4 into the FPN, LastLevelMaxPool), or, for the tiny models, the
    registered baseline."""
    with torch.device("meta"):
        if backbone == "tiny":
            model = build_detector(f"{arch}_tiny_fpn")
        elif backbone == "r50":
            builder = {
                "maskrcnn": maskrcnn_resnet50_fpn,
                "fasterrcnn": fasterrcnn_resnet50_fpn,
                "keypointrcnn": keypointrcnn_resnet50_fpn,
            }[arch]
            model = builder(weights=None, weights_backbone=None)
        else:
            fpn = resnet_fpn_backbone(
                backbone_name={"r101": "resnet101", "r18": "resnet18"}[backbone],
                weights=None,
                norm_layer=nn.BatchNorm2d,
                trainable_layers=5,
            )
            cls = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN, "keypointrcnn": KeypointRCNN}[arch]
            model = cls(fpn, num_classes=2 if arch == "keypointrcnn" else 91)
    return {k: v.shape for k, v in model.state_dict().items()}


# --- registry -----------------------------------------------------------------------------------


def test_registry_has_the_paper_models_and_each_name_says_what_it_is():
    names = list_models("detector")
    assert len(names) == len(set(names)) and set(names) <= set(list_models())
    assert set(REQUIRED) <= set(names)
    assert SMALL_NAMES, "no tiny/r18 models"
    for name in names:
        arch, backbone, nl, nlhead = parse(name)
        info = model_info(name)
        assert info.name == name and info.kind == "detector" and info.arch == arch
        assert info.has_keypoints == (arch == "keypointrcnn")
        assert info.has_masks == (arch == "maskrcnn")
        assert info.backbone == backbone
        assert info.backbone_block_after == (f"backbone.body.{BODY_BLOCK[backbone]}" if nl else None)
        assert info.head_blocks == (0 if not nlhead else 2 if backbone == "tiny" else 4)
        assert info.nonlocal_blocks == int(bool(nl)) + info.head_blocks
        assert not nlhead or arch == "keypointrcnn"


@pytest.mark.parametrize("name", list_models("detector"))
def test_state_dict_is_torchvision_s_plus_the_blocks_at_the_paper_s_positions(name):
    arch, backbone, _, _ = parse(name)
    with torch.device("meta"):
        model = build_detector(name)
    assert type(model) is {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN, "keypointrcnn": KeypointRCNN}[arch]
    state = model.state_dict()
    ref = reference_state(arch, backbone)
    # every torchvision key keeps its name, order and shape; the only new keys are the blocks'
    assert [k for k in state if not is_nl_key(k)] == list(ref)
    assert all(state[k].shape == ref[k] for k in ref)
    blocks = nonlocal_blocks(model)
    assert set(blocks) == expected_blocks(name)
    assert {k for k in state if is_nl_key(k)} == {
        f"{b}.{k}" for b, block in blocks.items() for k in block.state_dict()
    }
    body = model.backbone.body
    for block_name, block in blocks.items():
        owner = model.get_submodule(block_name.rsplit(".", 1)[0])
        assert owner.nl is block and isinstance(block, NonLocalBlock)
        assert block.dim == 2 and block.mode == "embedded_gaussian" and block.pool_kernel == (2, 2)
        assert isinstance(block.norm, nn.Identity) and block.options.norm == "none"  # the default norm
        assert block.use_scale  # logits / sqrt(inter_channels), as the released code
        assert all(p.requires_grad for p in block.parameters())
        if block_name.startswith("backbone."):
            index = int(block_name.split(".")[-2])
            assert index == len(body.layer3) - 2, "not right before the last residual block of res4"
            assert block.in_channels == LAYER3_CHANNELS[backbone]
            assert type(owner).__name__.endswith("WithNonLocal") and type(owner).__mro__[1] is type(
                body.layer3[-1]
            )
        else:  # after the ReLU closing every 2nd conv of the keypoint head
            head = list(model.roi_heads.keypoint_head)
            index = int(block_name.split(".")[-2])
            assert isinstance(owner, nn.ReLU) and isinstance(head[index - 1], nn.Conv2d)
            assert sum(isinstance(m, nn.Conv2d) for m in head[:index]) % 2 == 0
            assert block.in_channels == head[index - 1].out_channels == (32 if backbone == "tiny" else 512)
    if arch == "keypointrcnn" and backbone != "tiny":
        assert sum(isinstance(m, nn.Conv2d) for m in model.roi_heads.keypoint_head) == 8
    # no weights: torchvision's BatchNorm2d and every layer trainable
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_small_models_detect_and_train(name):
    arch = parse(name)[0]
    model = build_detector(name, num_classes=3, **TINY_RUN)
    calls = count_calls(list(nonlocal_blocks(model).values()))
    out = detect(model, [image(80, 96)])
    expected = {"boxes", "labels", "scores"} | {
        "maskrcnn": {"masks"},
        "fasterrcnn": set(),
        "keypointrcnn": {"keypoints", "keypoints_scores"},
    }[arch]
    assert set(out) == expected and len(out["boxes"]) > 0
    assert out["labels"].max() < 3
    if arch == "keypointrcnn":
        assert out["keypoints"].shape[1:] == (17, 3)
    assert all(c == 1 for c in calls), calls
    model.train()
    target = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
    if arch == "maskrcnn":
        target["masks"] = torch.zeros(1, 80, 96, dtype=torch.uint8)
        target["masks"][0, 12:70, 10:60] = 1
    if arch == "keypointrcnn":
        xy = torch.rand(17, 2) * torch.tensor([50.0, 58.0]) + torch.tensor([10.0, 12.0])
        target["keypoints"] = torch.cat([xy, torch.full((17, 1), 2.0)], dim=1)[None]
    losses = model([image(80, 96)], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert ("loss_mask" in losses) == (arch == "maskrcnn")
    assert ("loss_keypoint" in losses) == (arch == "keypointrcnn")
    assert all(torch.isfinite(v) for v in losses.values())


# --- torchvision checkpoints: keys, values, outputs -----------------------------------------------


def test_torchvision_coco_mask_rcnn_file_loads_and_the_nl_model_gives_its_outputs(tmp_path, caplog):
    """A torchvision Mask R-CNN state dict under torchvision's COCO_V1 file name: the _nl model
    loads it with only the block new, sets FrozenBatchNorm's eps to 0 (as torchvision does for that
    file) and detects exactly as the plain torchvision model (float64, eps 0)."""
    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **SMALL_R50)
    randomise_norms(ref)
    path = tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(ref.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="nonlocalnet.detection.models"):
        model = build_detector("maskrcnn_r50_fpn_nl", weights=path, **SMALL_R50)
    nl_keys = {k for k in model.state_dict() if is_nl_key(k)}
    assert nl_keys and all(k.startswith("backbone.body.layer3.4.nl.") for k in nl_keys)
    assert f"{len(nl_keys)} non-local tensors new (identity)" in caplog.text
    assert "FrozenBatchNorm eps 0" in caplog.text
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # num_classes from the file
    frozen = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.eps == 0.0 for m in frozen)
    own = model.state_dict()
    for k, v in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(own[k], v), k

    for m in ref.modules():  # what torchvision's overwrite_eps(model, 0.0) does to the trained model
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    x = [image(70, 90, dtype=torch.float64)]
    want = detect(ref.double(), x)
    model.double()
    calls = count_calls(list(nonlocal_blocks(model).values()))
    assert_same_detections(detect(model, x), want, **F64)
    assert calls == [1]
    assert want["masks"].shape[1:] == (1, 70, 90)


def test_torchvision_keypoint_file_loads_and_the_nl_nlhead_model_gives_its_outputs(tmp_path, caplog):
    """A frozen-BN checkpoint (no num_batches_tracked) of torchvision's Keypoint R-CNN into the model
    with the backbone block and the 4 head blocks: the 5 blocks are all that is new, and boxes,
    scores, labels and keypoints equal the plain model's (float64; FrozenBatchNorm eps 1e-5 kept)."""
    ref = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, **SMALL_R50)
    randomise_norms(ref)
    path = tmp_path / "keypoints.pth"
    saved = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(saved, path)
    name = "keypointrcnn_r50_fpn_nl_nlhead"
    with caplog.at_level(logging.INFO, logger="nonlocalnet.detection.models"):
        model = build_detector(name, weights=path, **SMALL_R50)
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
    new = set(model.state_dict()) - set(saved)
    assert {k.split(".nl.")[0] + ".nl" for k in new} == expected_blocks(name) and all(map(is_nl_key, new))
    assert set(saved) <= set(model.state_dict())
    assert f"loaded {len(saved)} tensors; {len(new)} non-local tensors new (identity)" in caplog.text
    assert "eps 0" not in caplog.text
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))

    x = [image(70, 90, seed=3, dtype=torch.float64)]
    want = detect(ref.double(), x)
    model.double()
    blocks = nonlocal_blocks(model)
    assert set(blocks) == expected_blocks(name)
    calls = count_calls(list(blocks.values()))
    assert_same_detections(detect(model, x), want, **F64)
    assert all(c == 1 for c in calls), calls


def test_torchvision_r101_fpn_file_loads_into_maskrcnn_r101_fpn_nl(tmp_path):
    with torch.device("meta"):
        fpn = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5)
        ref = MaskRCNN(fpn, num_classes=91)  # FrozenBatchNorm2d: resnet_fpn_backbone's default
    path = tmp_path / "r101.pth"
    torch.save(light_state(ref.state_dict()), path)
    model = build_detector("maskrcnn_r101_fpn_nl", weights=path)
    report = load_detector_weights(model, path)
    assert set(report.missing) == {k for k in model.state_dict() if is_nl_key(k)}
    assert {k.split(".nl.")[0] for k in report.missing} == {"backbone.body.layer3.21"}
    assert not report.skipped_shape_mismatch and set(report.loaded) == set(ref.state_dict())


def test_another_num_classes_reinitialises_only_the_predictors(tmp_path):
    base = build_detector("maskrcnn_tiny_fpn", num_classes=5)
    path = tmp_path / "tiny.pth"
    torch.save(base.state_dict(), path)
    model = build_detector("maskrcnn_tiny_fpn_nl", weights=path)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # the file's
    model = build_detector("maskrcnn_tiny_fpn_nl", weights=path, num_classes=3)
    report = load_detector_weights(model, path)
    assert {k.rsplit(".", 2)[0] for k in report.skipped_shape_mismatch} == {
        "roi_heads.box_predictor",
        "roi_heads.mask_predictor",
    }
    assert set(report.missing) == {k for k in model.state_dict() if is_nl_key(k)}
    assert torch.equal(model.backbone.body.conv1.weight, base.backbone.body.conv1.weight)


@pytest.mark.parametrize(
    "file_name, eps",
    [
        ("keypointrcnn_resnet50_fpn_coco-fc266e95.pth", 0.0),
        ("keypointrcnn_resnet50_fpn_coco-9f466800.pth", 1e-5),
    ],
)
def test_frozen_bn_eps_follows_torchvision_for_its_coco_v1_files(tmp_path, file_name, eps):
    """build_detector(weights=) and load_detector_weights set FrozenBatchNorm's eps alike."""
    base = build_detector("keypointrcnn_tiny_fpn")
    path, body = tmp_path / file_name, tmp_path / "body.pth"
    torch.save(base.state_dict(), path)
    torch.save(base.backbone.body.state_dict(), body)
    built = build_detector("keypointrcnn_tiny_fpn_nl", weights=path)
    loaded = build_detector("keypointrcnn_tiny_fpn_nl", weights_backbone=body)  # frozen BN, eps 1e-5
    report = load_detector_weights(loaded, path)
    assert bool(report.notes) == (eps == 0.0)
    for model in (built, loaded):
        frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        assert len(frozen) > 5 and all(m.eps == eps for m in frozen)


def test_nl_checkpoint_into_the_baseline_needs_strict_nonlocal_false(tmp_path):
    path = tmp_path / "nl.pth"
    torch.save(build_detector("maskrcnn_tiny_fpn_nl").state_dict(), path)
    with pytest.raises(InvalidValueError, match="_nl model"):
        build_detector("maskrcnn_tiny_fpn", weights=path)
    model = build_detector("maskrcnn_tiny_fpn")
    report = load_detector_weights(model, path, strict_nonlocal=False)
    assert report.skipped_nonlocal and all(is_nl_key(k) for k in report.skipped_nonlocal)
    # a file lacking the detector's tensors (an ImageNet body) is not a detector file
    body = tmp_path / "body.pth"
    torch.save(model.backbone.body.state_dict(), body)
    with pytest.raises(InvalidValueError, match="has no place for|lacks"):
        build_detector("maskrcnn_tiny_fpn_nl", weights=body)


# --- ImageNet bodies and torchvision's trainable_backbone_layers -------------------------------


def backbone_requires_grad(backbone: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in backbone.named_parameters() if not is_nl_key(n)}


def test_imagenet_resnet50_file_is_the_body_frozen_bn_and_three_trainable_layers(tmp_path):
    imagenet = resnet50(weights=None)
    randomise_norms(imagenet, seed=4)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_detector("maskrcnn_r50_fpn_nl", weights_backbone=path)
    body = model.backbone.body
    own = body.state_dict()
    loaded = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    assert set(own) == {k for k in loaded if not k.endswith("num_batches_tracked")} | {
        k for k in own if is_nl_key(k)
    }
    for k, v in loaded.items():
        if k in own:
            assert torch.equal(own[k], v), k
    assert all(isinstance(body.get_submodule(n), FrozenBatchNorm2d) for n in ("bn1", "layer2.0.bn3"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert model.backbone.body.bn1.eps == 1e-5  # only torchvision's COCO_V1 detector files use 0
    with torch.device("meta"):  # torchvision's default with weights_backbone: 3 trainable layers
        ref = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
        )
    assert backbone_requires_grad(model.backbone) == backbone_requires_grad(ref)
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in body.layer3[4].nl.parameters())
    # the block is identity: the body's output is the plain ResNet's (eval, frozen BN = BN eval)
    x = torch.rand(1, 3, 48, 48)
    imagenet.eval()
    with torch.no_grad():
        plain = nn.Sequential(*list(imagenet.children())[:-2])(x)  # up to layer4
        torch.testing.assert_close(body(x)["3"], plain, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings(META_LOAD)
@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4, 5, None])
def test_trainable_backbone_layers_freeze_as_torchvision_and_the_block_stays_trainable(tmp_path, layers):
    with torch.device("meta"):
        imagenet = light_state(resnet50().state_dict())
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet, path)
    with torch.device("meta"):
        model = build_detector(
            "keypointrcnn_r50_fpn_nl_nlhead", weights_backbone=path, trainable_backbone_layers=layers
        )
        ref = resnet_fpn_backbone(
            backbone_name="resnet50",
            weights=None,
            norm_layer=FrozenBatchNorm2d,
            trainable_layers=3 if layers is None else layers,
        )
    assert backbone_requires_grad(model.backbone) == backbone_requires_grad(ref)
    assert isinstance(model.backbone.body.layer3[4].bn1, FrozenBatchNorm2d)
    assert model.backbone.body.layer3[4].conv1.weight.requires_grad == (layers is None or layers >= 2)
    blocks = nonlocal_blocks(model)
    assert len(blocks) == 5 and all(p.requires_grad for b in blocks.values() for p in b.parameters())
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.body.")]
    assert all(p.requires_grad for p in heads)  # FPN, RPN and RoI heads always train


@pytest.mark.parametrize("layers", [0, 2])
def test_trainable_backbone_layers_without_weights_warn_and_train_all_as_torchvision(layers):
    with torch.device("meta"):
        with pytest.warns(UserWarning) as ours:
            model = build_detector("maskrcnn_r50_fpn_nl", trainable_backbone_layers=layers)
        with warnings.catch_warnings(record=True) as theirs:
            warnings.simplefilter("always")
            ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=layers)
    assert ours and theirs
    assert all(p.requires_grad for p in model.parameters()) and all(p.requires_grad for p in ref.parameters())
    assert isinstance(model.backbone.body.bn1, nn.BatchNorm2d) and isinstance(
        ref.backbone.body.bn1, nn.BatchNorm2d
    )


def test_the_blocks_get_gradients_inside_a_frozen_body(tmp_path):
    path = tmp_path / "kp.pth"
    torch.save(build_detector("keypointrcnn_tiny_fpn").state_dict(), path)
    model = build_detector("keypointrcnn_tiny_fpn_nl_nlhead", weights=path, trainable_backbone_layers=0)
    body = model.backbone.body
    assert not any(p.requires_grad for n, p in body.named_parameters() if not is_nl_key(n))
    blocks = nonlocal_blocks(model)
    assert len(blocks) == 3
    model.train()
    xy = torch.rand(17, 2) * 40 + 20
    target = {
        "boxes": torch.tensor([[16.0, 16.0, 64.0, 64.0]]),
        "labels": torch.tensor([1]),
        "keypoints": torch.cat([xy, torch.full((17, 1), 2.0)], dim=1)[None],
    }
    losses = model([image(96, 96)], [target])
    sum(losses.values()).backward()
    for name, block in blocks.items():
        assert all(p.requires_grad for p in block.parameters()), name
        w_z = block.out.weight  # the default norm is "none": W_z starts at 0 and gets the gradient
        assert w_z.grad is not None and w_z.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in body.named_parameters() if not is_nl_key(n))


# --- identity at initialisation, for every norm ---------------------------------------------------


@pytest.mark.parametrize(
    "norm, layer",
    [
        ("groupnorm", nn.GroupNorm),
        ("batchnorm", nn.BatchNorm2d),
        ("affine", AffineChannel),
        ("none", nn.Identity),
    ],
)
def test_every_block_norm_keeps_the_model_the_identity_at_init(tmp_path, norm, layer):
    base = build_detector("keypointrcnn_tiny_fpn", **TINY_RUN)
    randomise_norms(base)
    path = tmp_path / "base.pth"
    torch.save(base.state_dict(), path)
    base = build_detector("keypointrcnn_tiny_fpn", weights=path, **TINY_RUN)  # frozen BN too
    model = build_detector(
        "keypointrcnn_tiny_fpn_nl_nlhead", weights=path, nonlocal_options={"norm": norm}, **TINY_RUN
    )
    blocks = nonlocal_blocks(model)
    assert len(blocks) == 3 and all(type(b.norm) is layer and b.options.norm == norm for b in blocks.values())
    # train mode (float32: torchvision wants float32 keypoints): the same sampled proposals, the same losses
    xy = torch.rand(17, 2) * 40 + 30
    target = {
        "boxes": torch.tensor([[25.0, 20.0, 80.0, 75.0]]),
        "labels": torch.tensor([1]),
        "keypoints": torch.cat([xy, torch.full((17, 1), 2.0)], dim=1)[None],
    }
    losses = []
    for m in (base, model):
        m.train()
        torch.manual_seed(5)
        losses.append(m([image(96, 128)], [target]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-7)
    base.double()
    model.double()
    x = [image(96, 128, dtype=torch.float64)]
    want = detect(base, x)
    assert_same_detections(detect(model, x), want, **F64)
    # the blocks are on the path: a changed head block changes keypoints only, the body's all
    head_block = blocks["roi_heads.keypoint_head.3.nl"]
    perturb(head_block)
    got = detect(model, x)
    torch.testing.assert_close(got["boxes"], want["boxes"], **F64)
    assert not torch.allclose(got["keypoints_scores"], want["keypoints_scores"])
    perturb(blocks["backbone.body.layer3.0.nl"])
    got = detect(model, x)
    assert got["boxes"].shape != want["boxes"].shape or not torch.allclose(got["boxes"], want["boxes"])


def test_block_options_reach_the_blocks():
    model = build_detector(
        "maskrcnn_tiny_fpn_nl", nonlocal_options={"mode": "dot_product", "sub_sample": False}
    )
    (block,) = nonlocal_blocks(model).values()
    assert block.mode == "dot_product" and block.pool is None
    assert block.options == DETECTOR_BLOCK.replace(mode="dot_product", sub_sample=False)  # over the preset
    (block,) = nonlocal_blocks(build_detector("maskrcnn_tiny_fpn_nl")).values()
    assert block.inter_channels == 32 and block.pool_kernel == (2, 2)  # C / 2, 2x2 max pool
    assert block.options == DETECTOR_BLOCK
    whole = NonLocalOptions(mode="gaussian")  # a NonLocalOptions is used as it is
    (block,) = nonlocal_blocks(build_model("maskrcnn_tiny_fpn_nl", nonlocal_options=whole)).values()
    assert block.options == whole and block.options.norm == "batchnorm"


# --- whole-model pickling, deepcopy -------------------------------------------------------------


def test_whole_model_survives_torch_save_load_and_deepcopy(tmp_path):
    model = build_detector("keypointrcnn_tiny_fpn_nl_nlhead", **TINY_RUN).eval()
    for i, block in enumerate(nonlocal_blocks(model).values()):
        perturb(block, seed=10 + i)
    x = [image(96, 128, seed=7)]
    want = detect(model, x)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    back = torch.load(path, weights_only=False)
    twin = copy.deepcopy(model)
    again = pickle.loads(pickle.dumps(back))
    assert list(again.state_dict()) == list(model.state_dict())
    assert type(again.roi_heads.keypoint_head[3]) is type(model.roi_heads.keypoint_head[3])
    for other in (back, twin):
        assert list(other.state_dict()) == list(model.state_dict())
        assert list(nonlocal_blocks(other)) == list(nonlocal_blocks(model))
        for name in nonlocal_blocks(model):
            owner = name.rsplit(".", 1)[0]
            assert type(other.get_submodule(owner)) is type(model.get_submodule(owner))
        calls = count_calls(list(nonlocal_blocks(other).values()))
        assert_same_detections(detect(other, x), want, rtol=0, atol=0)
        assert calls == [1, 1, 1]
        other.train()
        assert all(b.training for b in nonlocal_blocks(other).values())
    # the copy's blocks are its own
    perturb(twin.backbone.body.layer3[0].nl, seed=99)
    assert_same_detections(detect(model, x), want, rtol=0, atol=0)
    assert not torch.equal(
        twin.backbone.body.layer3[0].nl.g.weight, model.backbone.body.layer3[0].nl.g.weight
    )


# --- errors ------------------------------------------------------------------------------------


def test_unknown_name_lists_close_names():
    with pytest.raises(InvalidValueError, match=r"did you mean maskrcnn_r50_fpn_nl") as err:
        build_detector("maskrcnn_r50_fpn_nll")
    assert "maskrcnn_r50_fpn_nll" in str(err.value)
    with pytest.raises(InvalidValueError, match="keypointrcnn_r101_fpn_nl_nlhead"):
        model_info("keypointrcnn_r101_fpn_nlnlhead")
    with pytest.raises(InvalidValueError, match=r"unknown model 'yolo'\. Valid names: "):
        build_detector("yolo")
    with pytest.raises(InvalidValueError, match="'c2d_r50' is a video model, not a detector model; detector"):
        build_detector("c2d_r50")


@pytest.mark.parametrize("bad", [0, 1, -3, True, 2.5, "3"])
def test_bad_num_classes(bad):
    with pytest.raises(InvalidValueError, match="num_classes"):
        build_detector("maskrcnn_tiny_fpn", num_classes=bad)


def test_num_keypoints_only_for_keypoint_models():
    with pytest.raises(InvalidValueError, match="num_keypoints is for keypoint models"):
        build_detector("maskrcnn_tiny_fpn_nl", num_keypoints=17)
    with pytest.raises(InvalidValueError, match="num_keypoints"):
        build_detector("keypointrcnn_tiny_fpn", num_keypoints=0)
    model = build_detector("keypointrcnn_tiny_fpn", num_keypoints=5)
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5


@pytest.mark.parametrize("key", ["in_channels", "dim"])
def test_nonlocal_options_may_not_set_what_the_placement_decides(key):
    with pytest.raises(InvalidValueError, match=rf"unknown non-local block option\(s\) \['{key}'\]"):
        build_detector("maskrcnn_tiny_fpn_nl", nonlocal_options={key: 2})


@pytest.mark.parametrize("argument", ["weights", "weights_backbone"])
def test_missing_weight_files(tmp_path, argument):
    missing = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(MissingFileError, match=f"{argument}: file not found") as err:
        build_detector("maskrcnn_tiny_fpn_nl", **{argument: missing})
    assert isinstance(err.value, FileNotFoundError) and str(missing) in str(err.value)
    with pytest.raises(MissingFileError):
        load_detector_weights(build_detector("maskrcnn_tiny_fpn"), missing)


def test_bad_trainable_layers_and_foreign_backbone_files(tmp_path):
    path = tmp_path / "tiny_body.pth"
    torch.save(build_detector("maskrcnn_tiny_fpn").backbone.body.state_dict(), path)
    for bad in (6, -1, True, 2.0):
        with pytest.raises(InvalidValueError, match="trainable_backbone_layers"):
            build_detector("maskrcnn_tiny_fpn", weights_backbone=path, trainable_backbone_layers=bad)
    with pytest.raises(InvalidValueError, match="weights_backbone .* does not fit"):
        build_detector("maskrcnn_r18_fpn", weights_backbone=path)  # another ResNet's shapes
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torch.load(path).items() if not k.startswith("layer3")}, partial)
    with pytest.raises(InvalidValueError, match="weights_backbone .* missing"):
        build_detector("maskrcnn_tiny_fpn_nl", weights_backbone=partial)


# --- torch.compile and ONNX (slow) --------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_of_a_tiny_detector_s_parts_with_blocks_has_no_graph_break():
    """Every module the blocks wrap (a BasicBlock, the keypoint head's ReLUs) compiles with
    ``fullgraph=True`` and matches eager. (The whole detector compiles too, with torchvision's
    own graph breaks in its post-processing, but that takes a minute on 2 cores.)"""
    model = build_detector("keypointrcnn_tiny_fpn_nl_nlhead", **TINY_RUN).eval()
    for i, block in enumerate(nonlocal_blocks(model).values()):
        perturb(block, seed=40 + i)
    x = image(96, 128, seed=8)[None]
    width = model.backbone.out_channels  # the FPN's width, the keypoint head's input
    rois = torch.randn(5, width, 14, 14, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = model.backbone(x)
        got = torch.compile(model.backbone, fullgraph=True)(x)
        assert list(got) == list(want) == ["0", "1", "pool"]
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
        head = model.roi_heads.keypoint_head
        torch.testing.assert_close(
            torch.compile(head, fullgraph=True)(rois), head(rois), rtol=1e-4, atol=1e-4
        )


@pytest.mark.slow
def test_onnx_export_of_the_whole_tiny_keypoint_detector_with_all_blocks(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build_detector("keypointrcnn_tiny_fpn_nl_nlhead", **TINY_RUN).eval()
    for i, block in enumerate(nonlocal_blocks(model).values()):
        perturb(block, seed=20 + i)
    x = image(96, 128, seed=9)
    path = tmp_path / "detector.onnx"
    names = ["boxes", "labels", "scores", "keypoints", "keypoints_scores"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # torchvision's detectors export with the TorchScript exporter (as torchvision tests them)
            torch.onnx.export(
                model,
                ([x],),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["image"],
                output_names=names,
                dynamic_axes={"image": [1, 2]},
            )
        except TypeError as err:  # a torch without the TorchScript exporter
            pytest.skip(f"no TorchScript ONNX exporter: {err}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, image(112, 80, seed=10)):  # another image size: the graph's sizes are dynamic
        got = dict(zip(names, session.run(None, {"image": inp.numpy()}), strict=True))
        want = detect(model, [inp])
        assert len(want["boxes"]) > 0
        for key in names:
            torch.testing.assert_close(
                torch.from_numpy(got[key]),
                want[key],
                rtol=1e-3,
                atol=1e-2 if key == "keypoints_scores" else 1e-3,
            )


@pytest.mark.slow
def test_onnx_export_of_a_tiny_backbone_with_its_block_keeps_the_image_size_dynamic(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = build_detector("maskrcnn_tiny_fpn_nl").eval()
    randomise_norms(model)
    perturb(model.backbone.body.layer3[0].nl, seed=30)
    backbone = model.backbone
    x = image(96, 128, seed=11)[None]
    path = tmp_path / "backbone.onnx"
    dims = {2: torch.export.Dim("height", min=32, max=512), 3: torch.export.Dim("width", min=32, max=512)}
    torch.onnx.export(backbone, (x,), str(path), dynamo=True, dynamic_shapes=(dims,))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, image(160, 64, seed=12)[None]):
        got = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        with torch.no_grad():
            want = list(backbone(inp).values())
        assert len(got) == len(want) == 3
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-4)
