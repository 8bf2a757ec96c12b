from pathlib import Path

import pytest
from tiny_video import tiny_config

from nonlocalnet.engine import ConfigError, save_config
from nonlocalnet.models import list_models, model_info
from nonlocalnet.tasks import config_from_dict, load_config

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


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("optim", "base_lr", -1, "optim.base_lr: must be >= 0"),
        ("optim", "momentum", -0.5, "optim.momentum: must be >= 0"),
        ("optim", "weight_decay", -1e-4, "optim.weight_decay: must be >= 0"),
        ("optim", "lr_gamma", -0.1, "optim.lr_gamma: must be >= 0"),
        ("optim", "base_lr", float("nan"), "optim.base_lr: must be >= 0"),
        ("optim", "warmup_iters", -5, "optim.warmup_iters: must be >= 0"),
        ("data", "num_workers", -1, "data.num_workers: must be >= 0"),
        ("train", "precise_bn_batches", -1, "train.precise_bn_batches: must be >= 0"),
        ("train", "dist_timeout_s", 0, "train.dist_timeout_s: must be > 0"),
        ("checkpoint", "every_iters", -1, "checkpoint.every_iters: must be >= 0"),
        ("eval", "every_epochs", -1, "eval.every_epochs: must be >= 0"),
    ],
)
def test_out_of_range_settings_are_config_errors(tiny_data, tmp_path, section, key, value, match):
    """These were accepted silently (a negative weight decay trained) or failed deep inside
    torch with a traceback (SGD's "Invalid learning rate", DataLoader's num_workers)."""
    with pytest.raises(ConfigError, match=match):
        config_from_dict(tiny_config(tiny_data, tmp_path, **{section: {key: value}}))


def test_the_task_chooses_the_config_class_and_its_sections():
    from nonlocalnet.tasks import DetectionTaskConfig, VideoConfig

    assert type(config_from_dict({})) is VideoConfig
    assert type(config_from_dict({"task": "detection"})) is DetectionTaskConfig
    with pytest.raises(ConfigError, match="unknown config key 'detection'"):
        config_from_dict({"detection": {"model": "maskrcnn_r50_fpn_nl"}})  # a video config
    with pytest.raises(ConfigError, match="unknown config key 'model'"):
        config_from_dict({"task": "detection", "model": {"name": "c2d_r50"}})
    with pytest.raises(ConfigError, match="unknown config key 'data.clip_length'"):
        config_from_dict({"task": "detection", "data": {"clip_length": 8}})
    with pytest.raises(ConfigError, match=r"eval.views: 'all' is not one of \('clip', 'video'\)"):
        config_from_dict({"eval": {"views": "all"}})


def test_the_video_data_defaults_are_the_data_layers():
    from nonlocalnet.data import ClipSampling, TransformConfig
    from nonlocalnet.tasks.video import VideoDataConfig

    data = VideoDataConfig()
    assert data.transform() == TransformConfig() and data.sampling() == ClipSampling()
    assert data.transform("clip").num_crops == 1 and data.sampling("clip").num_clips == 1


def test_check_config_checks_settings_changed_after_parsing():
    from nonlocalnet.engine.config import check_config
    from nonlocalnet.tasks import DetectionTaskConfig

    cfg = config_from_dict({})
    cfg.train.iterations, cfg.train.epochs = 10, 2
    with pytest.raises(ConfigError, match="train.iterations .* and train.epochs .* are both set"):
        check_config(cfg, "train(cfg)")
    with pytest.raises(
        TypeError, match=r"f\(cfg\): cfg must be a Config \(a DetectionTaskConfig; .* got VideoConfig"
    ):
        check_config(cfg, "f(cfg)", DetectionTaskConfig)
