"""The demo describes its networks by ``model.spec`` (a whole VideoResNetSpec), and they are the
networks it built before by borrowing a registry name and overriding every field."""

from __future__ import annotations

import pytest
import torch

from nonlocalnet.demo import DEMO_MODELS, full_recipe, model_section
from nonlocalnet.engine import build_model_from_config, config_from_dict
from nonlocalnet.models import StageSpec, build_model
from nonlocalnet.ops import SOFTMAX_MODES


def _borrowed_name_network(model, recipe, num_classes):
    """The demo's former recipe: ``c2d_r50`` with every structural field overridden."""
    t = 3 if model.arch == "i3d" else 1
    stages = [
        StageSpec(1, w, 1 if i == 0 else 2, (t,), (1,), (0,) if model.mode and i == 1 else ())
        for i, w in enumerate(recipe.widths)
    ]
    return build_model(
        "c2d_r50",
        num_classes,
        nonlocal_mode=model.mode or "embedded_gaussian",
        nonlocal_options={
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
    )


@pytest.mark.parametrize("model", DEMO_MODELS, ids=lambda m: m.key)
def test_the_demo_spec_builds_the_network_the_borrowed_name_built(model):
    recipe = full_recipe()
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
