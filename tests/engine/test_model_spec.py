"""``model.spec``: a config gives the whole network as a VideoResNetSpec, checked on load and
exclusive with a registry ``model.name``."""

from __future__ import annotations

import pytest
import torch
from tiny_video import tiny_config

from nonlocalnet.engine import ConfigError, config_to_dict
from nonlocalnet.models import StageSpec, VideoResNet, VideoResNetSpec
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import build_model_from_config

STAGES = [
    {"depth": 1, "width": 4, "stride": 1, "temporal_a": [3], "temporal_b": [1]},
    {"depth": 1, "width": 8, "stride": 2, "temporal_a": [1], "temporal_b": [1], "nonlocal_after": [0]},
]
SPEC = {"stages": STAGES, "stem_width": 8, "pool2_temporal": 0, "nonlocal_options": {"mode": "dot_product"}}


def test_a_spec_builds_exactly_that_network():
    cfg = config_from_dict({"model": {"spec": SPEC, "num_classes": 3, "dropout": 0.0}})
    assert cfg.model.name is None
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model)
    expected = VideoResNetSpec(
        stages=(StageSpec(1, 4, 1, (3,), (1,)), StageSpec(1, 8, 2, (1,), (1,), (0,))),
        stem_width=8,
        pool2_temporal=0,
        nonlocal_options={"mode": "dot_product"},
    )
    assert model.spec == expected
    torch.manual_seed(0)
    direct = VideoResNet(expected, num_classes=3, dropout=0.0)
    a, b = model.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = config_from_dict(config_to_dict(cfg))  # a saved config (name: null) loads back
    assert again.model == cfg.model


def test_a_spec_trains_through_the_engine(tmp_path, tiny_data):
    from nonlocalnet.engine import train

    raw = tiny_config(tiny_data, tmp_path / "run", train={"epochs": 1}, eval={"every_epochs": 0})
    raw["model"] = {"name": None, "spec": SPEC, "num_classes": 2}
    result = train(config_from_dict(raw))
    assert result.steps == 2 and result.final_eval is not None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "c2d_r50", "spec": SPEC}, r"model.name \('c2d_r50'\) and model.spec are both set"),
        ({"spec": SPEC, "variant": "released"}, r"so model.variant .*must stay unset"),
        (
            {"spec": SPEC, "nonlocal_options": {"mode": "gaussian"}},
            r"so model.nonlocal_options .*must stay unset",
        ),
        ({"spec": SPEC, "overrides": {"stem_width": 4}}, r"so model.overrides .*must stay unset"),
        ({"spec": {"stages": STAGES, "stem_widht": 8}}, r"model.spec: unknown field\(s\) \['stem_widht'\]"),
        ({"spec": {"stem_width": 8}}, r"model.spec.stages: required"),
        ({"spec": {"stages": [STAGES[0], "res3"]}}, r"model.spec.stages\[1\]: expected a mapping"),
        (
            {"spec": {"stages": [dict(STAGES[0], temporal_a=[2])]}},
            r"model.spec.stages\[0\]: temporal_a must hold 1 odd kernels",
        ),
        ({"spec": {"stages": STAGES, "stem_width": "8"}}, r"model.spec.stem_width: expected int, got str"),
        ({"spec": {"stages": STAGES, "pool1_padding": 2}}, r"model.spec: pool1_padding must be 0 or 1"),
        ({"name": None}, r"set model.name .* or model.spec"),
    ],
)
def test_a_wrong_model_choice_is_a_config_error_naming_the_key(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})
