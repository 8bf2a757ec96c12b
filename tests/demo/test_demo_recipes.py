"""The demos' recipes are config files (``nonlocalnet/demo/recipes/``) of the training configs'
schema plus a ``demo`` section; the run configs built from them are, number for number, the ones
the former ``DemoRecipe``/``DetectionRecipe`` dataclasses built (recorded below)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from nonlocalnet.demo import DEMO_MODELS
from nonlocalnet.demo.detection_data import ContextShapesConfig
from nonlocalnet.demo.detection_run import detection_demo_config, run_detection_demo
from nonlocalnet.demo.recipe import (
    RECIPES_DIR,
    DetectionDemoConfig,
    VideoDemoConfig,
    detection_recipe,
    recipe_path,
    recipe_settings,
    video_recipe,
    video_recipe_name,
)
from nonlocalnet.demo.run import demo_config, run_demo
from nonlocalnet.demo.synthetic import LongRangeTaskConfig
from nonlocalnet.engine.config import ConfigError, config_to_dict
from nonlocalnet.layers import NonLocalOptions
from nonlocalnet.tasks import DetectionTaskConfig, VideoConfig


def _flat_changes(cfg, cls) -> dict:
    """``cfg``'s settings that differ from ``cls()``'s, as ``section.key``."""
    mine, defaults = config_to_dict(cfg), config_to_dict(cls())
    out = {}
    for name, value in mine.items():
        if isinstance(value, dict):
            out |= {f"{name}.{k}": v for k, v in value.items() if defaults[name][k] != v}
        elif defaults[name] != value:
            out[name] = value
    return out


def _stages(temporal_a, nonlocal_after):
    stages = [
        {"depth": 1, "width": w, "stride": 1 if i == 0 else 2, "temporal_a": [t], "temporal_b": [1]}
        for i, (w, t) in enumerate(zip((16, 32, 64, 128), temporal_a, strict=True))
    ]
    if nonlocal_after:
        stages[2]["nonlocal_after"] = [0]
    return stages


def _spec(temporal_a, nonlocal_after, use_scale, conv1_temporal):
    return {
        "stages": _stages(temporal_a, nonlocal_after),
        "stem_width": 16,
        "conv1_temporal": conv1_temporal,
        "conv1_temporal_stride": 1,
        "pool1_temporal": 1,
        "pool1_temporal_stride": 1,
        "pool2_temporal": 0,
        # the former recipe's block settings; every other option at the block's default (the
        # run configs now spell out every field)
        "nonlocal_options": NonLocalOptions(
            pool_before_conv=False,
            use_scale=use_scale,
            init="msra",
            mode="embedded_gaussian",
            sub_sample=False,
        ).to_dict(),
    }


# what the former demo_config(model, data, full_recipe()/quick_recipe(), seed=1, output="OUT")
# built, as the settings that differ from VideoConfig()'s (recorded from that code)
_VIDEO = {
    "output_dir": "OUT",
    "seed": 1,
    "data.num_workers": 0,
    "data.train_list": "DATA/train.txt",
    "data.val_list": "DATA/val.txt",
    "data.class_names": "DATA/classes.txt",
    "data.clip_length": 6,
    "data.stride": 1,
    "data.num_clips": 1,
    "data.min_short": 24,
    "data.max_short": 24,
    "data.crop": 24,
    "data.flip": False,
    "data.test_short": 24,
    "data.test_crop": 24,
    "data.num_crops": 1,
    "optim.base_lr": 0.02,
    "optim.base_batch_size": 16,
    "optim.lr_milestones": [0.75],
    "optim.warmup_iters": 125,
    "train.batch_size": 16,
    "train.epochs": 10,
    "train.log_every": 5,
    "checkpoint.keep_last": 1,
    "checkpoint.keep_best": False,
    "eval.every_epochs": 0,
    "eval.batch_size": 32,
    "eval.views": "video",
    "model.name": None,
    "model.num_classes": 2,
    "model.dropout": 0.0,
}
_C2D = {**_VIDEO, "model.spec": _spec([1, 1, 1, 1], False, False, 1)}
_I3D_NL = {**_VIDEO, "model.temporal_padding": "replicate", "model.spec": _spec([3, 3, 1, 1], True, True, 1)}
_V3 = {
    "data.clip_length": 4,
    "data.stride": 4,
    **{f"data.{k}": 32 for k in ("min_short", "max_short", "crop", "test_short", "test_crop")},
}
_V3_I3D_NL = {**_I3D_NL, **_V3, "model.spec": _spec([3, 3, 3, 3], True, True, 5)}
EXPECTED_VIDEO = {
    ("video", "c2d"): _C2D,
    ("video", "i3d_nl"): _I3D_NL,
    ("video_quick", "c2d"): {**_C2D, "optim.warmup_iters": 94},
    ("video_quick", "i3d_nl"): {**_I3D_NL, "optim.warmup_iters": 94},
    ("video_v3", "c2d"): {**_C2D, **_V3},
    ("video_v3", "i3d_nl"): _V3_I3D_NL,
    ("video_v3_quick", "i3d_nl"): {**_V3_I3D_NL, "optim.warmup_iters": 62},
}
# the generated task of each recipe, as full_recipe()/quick_recipe() (and "v3") had it
_V3_TASK = {"num_frames": 16, "height": 32, "width": 32, "object_size": 8, "cue_frames": 4}
_V3_TASK["cue_window"] = None
EXPECTED_TASK = {
    "video": LongRangeTaskConfig(),
    "video_quick": LongRangeTaskConfig(num_train=1500, num_val=200),
    "video_v3": LongRangeTaskConfig(**_V3_TASK),
    "video_v3_quick": LongRangeTaskConfig(**_V3_TASK, num_train=1000, num_val=200),
}

# what the former detection_demo_config(model, splits, full/quick_detection_recipe(), seed, "OUT")
# built, as the settings that differ from DetectionTaskConfig()'s
_DETECTION = {
    "output_dir": "OUT",
    "seed": 2,
    "data.num_workers": 0,
    "optim.base_lr": 0.02,
    "optim.base_batch_size": 8,
    "optim.nesterov": False,
    "optim.lr_milestones": [0.8],
    "optim.warmup_iters": 99,
    "optim.warmup_factor": 0.001,
    "optim.nonlocal_lr_mult": 10.0,
    "train.epochs": 4,
    "train.log_every": 10,
    "checkpoint.keep_last": 1,
    "checkpoint.keep_best": False,
    "eval.every_epochs": 0,
    "eval.batch_size": 8,
    "detection.model": "maskrcnn_tiny_fpn_nl",
    "detection.nonlocal_options": {"algorithm": "chunked"},
    "detection.min_size": [128],
    "detection.max_size": 128,
    "detection.train_images": "DATA/train",
    "detection.train_annotations": "DATA/train.json",
    "detection.val_images": "DATA/val",
    "detection.val_annotations": "DATA/val.json",
    "detection.aspect_ratio_grouping": False,
    "detection.oks_sigmas": [0.07, 0.07, 0.07, 0.07],
    "detection.min_keypoints_per_image": 0,
}
_TUNING = {
    "seed": 0,
    "detection.model": "maskrcnn_tiny_fpn",
    "detection.val_images": "DATA/tuning",
    "detection.val_annotations": "DATA/tuning.json",
}
_TUNING = {k: v for k, v in {**_DETECTION, **_TUNING}.items() if k != "seed"}  # seed 0: the default


def _splits() -> dict[str, SimpleNamespace]:
    return {
        s: SimpleNamespace(images=Path(f"DATA/{s}"), annotations=Path(f"DATA/{s}.json"))
        for s in ("train", "val", "tuning")
    }


def _data(task: LongRangeTaskConfig) -> SimpleNamespace:
    return SimpleNamespace(
        config=task,
        train_list=Path("DATA/train.txt"),
        val_list=Path("DATA/val.txt"),
        classes_file=Path("DATA/classes.txt"),
        class_names=["different", "same"],
    )


@pytest.mark.parametrize(("recipe", "key"), list(EXPECTED_VIDEO), ids=[f"{r}-{k}" for r, k in EXPECTED_VIDEO])
def test_the_video_recipes_build_the_former_run_configs(recipe, key):
    cfg = video_recipe(recipe)
    assert cfg.demo.long_range_task() == EXPECTED_TASK[recipe]
    model = next(m for m in DEMO_MODELS if m.key == key)
    run = demo_config(model, _data(cfg.demo.long_range_task()), cfg, 1, Path("OUT"))
    assert type(run) is VideoConfig
    assert _flat_changes(run, VideoConfig) == EXPECTED_VIDEO[recipe, key]


def test_the_generic_sections_are_the_former_ones_in_full():
    """Every value of optim, train, checkpoint and eval, the library's defaults included."""
    cfg = video_recipe("video")
    run = config_to_dict(demo_config(DEMO_MODELS[0], _data(cfg.demo.long_range_task()), cfg, 1, Path("OUT")))
    assert run["optim"] == {
        "base_lr": 0.02, "base_batch_size": 16, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0001,
        "weight_decay_norm": 0.0, "lr_milestones": [0.75], "lr_gamma": 0.1, "warmup_iters": 125,
        "warmup_factor": 0.1, "nonlocal_lr_mult": 1.0,
    }  # fmt: skip
    assert run["train"] == {
        "batch_size": 16, "grad_accum": 1, "iterations": 0, "epochs": 10, "amp": "none",
        "precise_bn_batches": 0, "memory_format": "contiguous", "log_every": 5, "progress": True,
        "sync_bn": False, "deterministic": False, "dist_timeout_s": 300.0,
    }  # fmt: skip
    assert run["checkpoint"] == {"every_iters": 0, "keep_last": 1, "keep_best": False}
    assert run["eval"] == {"every_epochs": 0, "batch_size": 32, "views": "video"}
    det = detection_recipe("detection")
    run = config_to_dict(detection_demo_config("maskrcnn_tiny_fpn_nl", _splits(), det, 2, Path("OUT")))
    assert run["optim"] == {
        "base_lr": 0.02, "base_batch_size": 8, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0001,
        "weight_decay_norm": 0.0, "lr_milestones": [0.8], "lr_gamma": 0.1, "warmup_iters": 99,
        "warmup_factor": 0.001, "nonlocal_lr_mult": 10.0,
    }  # fmt: skip
    assert run["train"] == {
        "batch_size": 8, "grad_accum": 1, "iterations": 0, "epochs": 4, "amp": "none",
        "precise_bn_batches": 0, "memory_format": "contiguous", "log_every": 10, "progress": True,
        "sync_bn": False, "deterministic": False, "dist_timeout_s": 300.0,
    }  # fmt: skip
    assert run["eval"] == {"every_epochs": 0, "batch_size": 8}


@pytest.mark.parametrize("recipe", ["detection", "detection_quick"])
def test_the_detection_recipes_build_the_former_run_configs(recipe):
    cfg = detection_recipe(recipe)
    splits = _splits()
    run = detection_demo_config("maskrcnn_tiny_fpn_nl", splits, cfg, 2, Path("OUT"))
    assert type(run) is DetectionTaskConfig
    assert _flat_changes(run, DetectionTaskConfig) == _DETECTION
    tuning = detection_demo_config("maskrcnn_tiny_fpn", splits, cfg, 0, Path("OUT"), evaluate_on="tuning")
    assert _flat_changes(tuning, DetectionTaskConfig) == _TUNING
    demo = cfg.demo
    assert demo.context_shapes() == ContextShapesConfig(
        key_size=28, object_size=(10, 16), min_objects=1, max_objects=2, rule="key"
    )
    quick = recipe == "detection_quick"
    assert (demo.num_train, demo.num_val, demo.num_tuning, demo.data_seed) == (
        (800, 150, 0, 0) if quick else (800, 300, 150, 0)
    )
    assert demo.seeds == (1 if quick else 3)
    mask = ["maskrcnn_tiny_fpn", "maskrcnn_tiny_fpn_nl"]
    assert demo.models == (mask if quick else [*mask, "keypointrcnn_tiny_fpn", "keypointrcnn_tiny_fpn_nl"])


def _defaults(path: Path) -> tuple[dict, dict]:
    """The settings a recipe file's own keys replace (its base's, else the library's), and its
    generator's."""
    base = yaml.safe_load(path.read_text()).get("base")
    if path.stem.startswith("detection"):
        cfg = detection_recipe(path.parent / base) if base else DetectionDemoConfig()
        generator = dataclasses.asdict(cfg.demo.context_shapes())
    else:
        cfg = video_recipe(path.parent / base) if base else VideoDemoConfig()
        generator = dataclasses.asdict(cfg.demo.long_range_task())
    return config_to_dict(cfg), generator


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_recipe_file_states_only_what_differs_from_its_defaults(path):
    """Each default is stated once: no key of a recipe file repeats its base's or the library's value."""
    own = yaml.safe_load(path.read_text())
    own.pop("base", None)
    own.pop("task", None)  # which config class reads it (``task: detection``, as a user's file says)
    defaults, generator = _defaults(path)
    for name, section in own.items():
        if not isinstance(section, dict):
            assert defaults[name] != section, name
            continue
        for key, value in section.items():
            if name == "demo" and key == "generator":
                for k, v in value.items():
                    assert generator[k] != (tuple(v) if isinstance(v, list) else v), f"demo.generator.{k}"
            else:
                assert defaults[name][key] != value, f"{name}.{key}"


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'demo.widht'"):
        video_recipe("video", ["demo.widht=[8, 8, 8, 8]"])
    with pytest.raises(ConfigError, match=r"demo.seeds: expected int"):
        video_recipe("video", ["demo.seeds=two"])
    with pytest.raises(ConfigError, match=r"unknown config key 'demo.generator.num_trian'"):
        video_recipe("video", ["demo.generator.num_trian=10"])
    with pytest.raises(ConfigError, match=r"demo.generator: object_size must be"):
        video_recipe("video", ["demo.generator.object_size=40"])
    with pytest.raises(ConfigError, match=r"demo.widths: expected 4 widths"):
        video_recipe("video", ["demo.widths=[8, 8]"])
    with pytest.raises(ConfigError, match=r"demo.i3d_inflated"):
        video_recipe("video", ["demo.i3d_inflated=[4]"])
    with pytest.raises(ConfigError, match=r"demo.seeds: must be >= 1"):
        detection_recipe("detection", ["demo.seeds=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'demo.generator.colour'"):
        detection_recipe("detection", ["demo.generator.colour=1"])
    with pytest.raises(ConfigError, match=r"task: 'detection' is not one of \('video_classification',\)"):
        video_recipe("video", ["task=detection"])
    with pytest.raises(ConfigError, match=r"neither a built-in recipe .*'video_quick'.* nor a file"):
        video_recipe("video_fast")
    with pytest.raises(ValueError, match="unknown demo task version 'v5'"):
        video_recipe_name("v5")
    with pytest.raises(ValueError, match=r"jobs and seeds must be >= 1"):
        run_demo(tmp_path, recipe="video_quick", seeds=0)
    with pytest.raises(ValueError, match=r"tuning=True needs a recipe with demo.num_tuning > 0"):
        run_detection_demo(tmp_path, recipe="detection_quick", tuning=True)


def test_a_users_recipe_file_and_overrides(tmp_path):
    """A recipe is an ordinary config file: a copy with ``base:`` and changes, or overrides."""
    (tmp_path / "video.yaml").write_text((RECIPES_DIR / "video.yaml").read_text())
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: video.yaml\noptim: {base_lr: 0.05}\ndemo: {widths: [8, 8, 16, 16], seeds: 2}\n")
    cfg = video_recipe(mine, ["demo.generator.num_train=40"])
    assert (cfg.optim.base_lr, cfg.demo.widths, cfg.demo.seeds) == (0.05, [8, 8, 16, 16], 2)
    assert cfg.demo.long_range_task().num_train == 40 and cfg.train.epochs == 10
    assert recipe_path(mine) == mine and recipe_path("video_quick") == RECIPES_DIR / "video_quick.yaml"
    assert [video_recipe_name(t, q) for t in ("v4", "v3") for q in (False, True)] == [
        "video", "video_quick", "video_v3", "video_v3_quick"
    ]  # fmt: skip
    settings = recipe_settings(cfg)
    assert settings["optim.base_lr"] == 0.05 and "optim.momentum" not in settings
    assert settings["demo"]["widths"] == [8, 8, 16, 16] and settings["demo"]["generator"] == {"num_train": 40}


def test_the_demo_commands_take_a_recipe(capsys):
    from nonlocalnet.cli import main

    assert main(["demo", "--recipe", "video_fast", "--no-progress"]) == 2
    assert "demo recipe 'video_fast': neither a built-in recipe" in capsys.readouterr().err
    assert main(["detect-demo", "--recipe", "detection_fast", "--no-progress"]) == 2
    assert "demo recipe 'detection_fast'" in capsys.readouterr().err
