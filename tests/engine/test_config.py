from pathlib import Path

import pytest

from nonlocalnet.engine import ConfigError, config_from_dict, load_config, save_config
from nonlocalnet.models import list_models, model_info

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_paper_recipe():
    cfg = config_from_dict({})
    assert cfg.optim.nesterov and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.weight_decay_norm == 0.0
    assert cfg.data.mean == [114.75] * 3 and cfg.data.std == [57.375] * 3
    assert cfg.model.dropout == 0.5


@pytest.mark.parametrize("name", list_models("video"))
def test_every_registry_model_has_a_config(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    info = model_info(name)
    assert cfg.model.name == name
    assert (cfg.data.clip_length, cfg.data.stride) == (info.frames, info.sample_rate)
    assert cfg.train.iterations == 400_000 and cfg.optim.lr_milestones == [0.375, 0.75]
    assert cfg.optim.base_lr * 64 / cfg.optim.base_batch_size == pytest.approx(0.01)


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(
        CONFIGS / "c2d_r50.yaml",
        [
            "train.batch_size=4",
            "optim.lr_milestones=[0.5]",
            "data.flip=false",
            "model.overrides={pool2_temporal: 0}",
        ],
    )
    assert cfg.train.batch_size == 4 and cfg.optim.lr_milestones == [0.5]
    assert cfg.data.flip is False and cfg.model.overrides == {"pool2_temporal": 0}
    assert cfg.model.name == "c2d_r50"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.batch_sise=4", r"unknown config key 'train.batch_sise' \(did you mean train.batch_size\?\)"),
        ("trian.batch_size=4", r"unknown config key 'trian'"),
        ("train.batch_size=four", r"train.batch_size: expected int, got str 'four'"),
        ("train.batch_size=2.5", r"train.batch_size: expected int"),
        ("train.batch_size=0", r"train.batch_size: must be >= 1"),
        ("train.amp=fp8", r"train.amp: 'fp8' is not one of"),
        ("data.flip=3", r"data.flip: expected bool"),
        ("model=3", r"model: expected a mapping"),
        ("optim.lr_milestones=[1.5]", r"optim.lr_milestones"),
        ("model.init=imagenet", r"model.init is 'imagenet' but model.init_path is not set"),
        ("train.batch_size", r"not of the form section.key=value"),
    ],
)
def test_bad_configs_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "c2d_r50.yaml", [override])


def test_ints_are_accepted_for_floats_and_null_for_optional():
    cfg = config_from_dict({"optim": {"base_lr": 1}, "data": {"root": None}})
    assert cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr, float)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loop"):
        load_config(loop)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "i3d_nl5_r50_8x8.yaml", ["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
