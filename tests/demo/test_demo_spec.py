"""The demo describes its networks by ``model.spec`` (a whole VideoResNetSpec), and they are the
networks it built before by borrowing a registry name and overriding every field."""

from __future__ import annotations

import pytest
import torch

from nonlocalnet.demo import DEMO_MODELS, model_section, video_recipe
from nonlocalnet.models import StageSpec, build_model
from nonlocalnet.ops import SOFTMAX_MODES
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import build_model_from_config


def _borrowed_name_network(model, recipe, num_classes):
    """The demo's former recipe: ``c2d_r50`` with every structural field overridden."""

    def t(i):
        return 3 if model.arch == "i3d" and i in recipe.i3d_inflated else 1

    stages = [
        StageSpec(1, w, 1 if i == 0 else 2, (t(i),), (1,), (0,) if model.mode and i == 2 else ())
        for i, w in enumerate(recipe.widths)
    ]
    return build_model(
        "c2d_r50",
        num_classes=num_classes,
        nonlocal_options={
            "mode": model.mode or "embedded_gaussian",
            "sub_sample": recipe.sub_sample,
            "use_scale": recipe.scale and model.mode in SOFTMAX_MODES,
        },
        dropout=0.0,
        stem_width=recipe.stem_width,
        conv1_temporal=recipe.i3d_conv1 if model.arch == "i3d" else 1,
        conv1_temporal_stride=1,
        pool1_temporal=recipe.pool1_temporal,
        pool1_temporal_stride=recipe.pool1_temporal,
        pool2_temporal=recipe.pool2_temporal,
        stages=tuple(stages),
        temporal_padding=recipe.i3d_temporal_padding if model.arch == "i3d" else "zeros",
    )


@pytest.mark.parametrize("model", DEMO_MODELS, ids=lambda m: m.key)
def test_the_demo_spec_builds_the_network_the_borrowed_name_built(model):
    recipe = video_recipe().demo
    section = model_section(model, 5, recipe)
    assert section["name"] is None and "overrides" not in section
    cfg = config_from_dict({"model": section})
    torch.manual_seed(0)
    new = build_model_from_config(cfg.model)
    torch.manual_seed(0)
    old = _borrowed_name_network(model, recipe, 5)
    assert new.spec == old.spec
    assert repr(new) == repr(old)
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in old.parameters())
    old_state = old.state_dict()
    for key, value in new.state_dict().items():
        assert torch.equal(value, old_state[key]), key
    assert new.state_dict().keys() == old_state.keys()
    assert len(new.nonlocal_blocks()) == model.num_nonlocal if hasattr(new, "nonlocal_blocks") else True


def _frames_seen(net, clip, t):
    """Input frames whose pixels change res5's features at output time ``t`` (by autograd)."""
    x = torch.randn(clip, requires_grad=True)
    net.features(x)[:, :, t].sum().backward()
    return (x.grad.abs().amax(dim=(0, 1, 3, 4)) > 0).nonzero().flatten().tolist()


@pytest.mark.parametrize("key", ["c2d", "i3d"])
def test_the_baselines_never_see_both_cues_before_the_global_pooling(key):
    """The task's relation spans more frames than the baselines' temporal receptive field: no res5
    position of the C2D or the I3D sees the early and the late cue's frames together, so their
    pooled logit is additive in the two cues (docs/demo.md: the additive ceiling)."""
    cfg = video_recipe()
    recipe, task, clip_length = cfg.demo, cfg.demo.long_range_task(), cfg.data.clip_length
    model = next(m for m in DEMO_MODELS if m.key == key)
    net = build_model_from_config(config_from_dict({"model": model_section(model, 2, recipe)}).model).eval()
    field = net.spec.temporal_receptive_field
    span = cfg.data.stride * (clip_length - 1) + 1  # input frames of one clip
    assert span == task.num_frames  # the clip holds the whole video: both cues are in it
    # the earliest late-cue frame is min_frame_gap after the latest early-cue frame
    assert field <= task.min_frame_gap, (key, field, task.min_frame_gap)
    assert field == (1 if key == "c2d" else recipe.i3d_conv1 + 2 * len(recipe.i3d_inflated))
    clip = (1, 3, clip_length, task.height, task.width)
    seen = [_frames_seen(net, clip, t) for t in range(clip_length)]
    assert max(len(s) for s in seen) == field  # the property is what autograd finds
    for frames in seen:
        assert frames == list(range(frames[0], frames[-1] + 1))
        early = [f for f in frames if f < task.window]
        late = [f for f in frames if f >= task.num_frames - task.window]
        assert not (early and late), frames


def test_the_i3d_with_a_block_sees_the_whole_clip():
    cfg = video_recipe()
    model = next(m for m in DEMO_MODELS if m.key == "i3d_nl")
    net = build_model_from_config(config_from_dict({"model": model_section(model, 2, cfg.demo)}).model).eval()
    with torch.no_grad():  # a trained block: at initialisation its zero W_z passes nothing on
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    task, clip_length = cfg.demo.long_range_task(), cfg.data.clip_length
    clip = (1, 3, clip_length, task.height, task.width)
    assert _frames_seen(net, clip, 0) == list(range(clip_length))
