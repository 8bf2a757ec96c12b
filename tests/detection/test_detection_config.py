"""The config's ``detection`` section and the shipped detection configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nonlocalnet.engine import ConfigError
from nonlocalnet.engine.checkpoint import RESUME_FREE_SETTINGS, changed_settings
from nonlocalnet.engine.config import config_to_dict
from nonlocalnet.tasks import Detection, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_detection_config_loads_with_the_reference_recipe(path):
    cfg = load_config(path)
    assert cfg.task == "detection"
    assert cfg.optim.base_lr == 0.02 and cfg.optim.base_batch_size == 16  # 0.02 per 16 images
    assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4
    assert cfg.optim.warmup_iters == 1000 and cfg.optim.warmup_factor == 0.001
    epochs = 46 if "keypoint" in path.stem else 26
    steps = (36, 43) if "keypoint" in path.stem else (16, 22)
    assert cfg.train.epochs == epochs and cfg.train.iterations == 0
    assert [round(m * epochs, 6) for m in cfg.optim.lr_milestones] == list(steps)
    if path.stem not in ("coco", "coco_keypoints"):
        assert cfg.detection.model == path.stem


def test_every_detector_in_the_registry_has_a_config_or_is_a_small_one():
    pytest.importorskip("torchvision")
    import nonlocalnet.detection  # noqa: F401  (registers the detectors)
    from nonlocalnet.models import list_models

    shipped = {p.stem for p in CONFIGS.glob("*.yaml")}
    missing = [
        n for n in list_models("detector") if n not in shipped and "_tiny_" not in n and "_r18_" not in n
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"num_classes": 1}, "counts the background"),
        ({"num_classes": -3}, "counts the background"),
        ({"min_size": []}, "detection.min_size"),
        ({"min_size": [800, 0]}, "detection.min_size"),
        ({"min_size": [True]}, "detection.min_size"),
        ({"trainable_backbone_layers": 6}, "0 to 5"),
        ({"mask_threshold": 1.5}, "mask_threshold"),
        ({"oks_sigmas": [0.1, -0.2]}, "oks_sigmas"),
        ({"train_images": "imgs"}, "go together"),
        ({"val_annotations": "a.json"}, "go together"),
        ({"max_size": 0}, "detection.max_size"),
        ({"modle": "x"}, "did you mean detection.model"),
    ],
)
def test_bad_detection_settings_are_errors_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"task": "detection", "detection": section})


def test_a_resume_may_change_the_evaluation_data_and_weights_paths_but_not_the_model():
    a = config_to_dict(config_from_dict({"task": "detection"}))
    b = config_to_dict(
        config_from_dict(
            {
                "task": "detection",
                "detection": {"val_images": "v", "val_annotations": "v.json", "weights": "w.pth"},
            }
        )
    )
    free = (*RESUME_FREE_SETTINGS, *Detection.resume_free_settings)  # what the loop allows
    assert changed_settings(a, b, free=free) == []
    c = config_to_dict(
        config_from_dict({"task": "detection", "detection": {"model": "maskrcnn_r101_fpn_nl"}})
    )
    assert [k for k, *_ in changed_settings(a, c, free=free)] == ["detection.model"]


def test_a_video_config_written_with_a_detection_section_still_compares():
    """Video configs once held the ``detection`` section; a section only one side has is not compared."""
    new = config_to_dict(config_from_dict({}))
    assert "detection" not in new
    old = {**new, "detection": config_to_dict(config_from_dict({"task": "detection"}))["detection"]}
    assert changed_settings(old, new) == []


_BLOCK_TORCHVISION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torchvision', 'pycocotools'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_importing_the_package_never_imports_torchvision():
    code = (
        "import sys, nonlocalnet, nonlocalnet.engine, nonlocalnet.cli, nonlocalnet.demo, nonlocalnet.tasks\n"
        "import nonlocalnet.denoise, nonlocalnet.viz\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'pycocotools'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_video_models_and_the_cli_work_without_torchvision():
    code = _BLOCK_TORCHVISION + (
        "import torch\n"
        "from nonlocalnet import build_model, NonLocalBlock\n"
        "from nonlocalnet.cli import main\n"
        "m = build_model('c2d_nl1_r50', num_classes=4)\n"
        "assert NonLocalBlock(8, dim=2)(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)\n"
        "assert main(['models']) == 0\n"
        "assert main(['detect-demo', '--quick', '--output', '/nonexistent/x']) == 2\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "c2d_nl1_r50" in out.stdout
    assert "nonlocalnet[detection]" in out.stdout
    assert "nonlocalnet[detection]" in out.stderr  # detect-demo: one line naming the extra


def test_detector_weights_take_a_file_or_a_weights_name(tmp_path, monkeypatch):
    """``detection.weights`` / ``weights_backbone``: a path as it is, a catalogue name through the
    weights cache (``resolve_weights``), anything else an error naming the key."""
    from nonlocalnet.errors import MissingFileError
    from nonlocalnet.tasks.detection import DetectionConfig
    from nonlocalnet.tasks.detection import setup as trained

    file = tmp_path / "coco.pth"
    file.write_bytes(b"x")
    fetched = tmp_path / "cache" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    asked = []

    def weights_file(name, **_):
        asked.append(name)
        return fetched

    monkeypatch.setattr("nonlocalnet.models.pretrained.weights_file", weights_file)
    assert trained.weights_path(DetectionConfig(weights=str(file)), "weights") == file
    assert trained.weights_path(DetectionConfig(), "weights") is None
    name = "maskrcnn_resnet50_fpn_coco_v1"
    assert trained.weights_path(DetectionConfig(weights_backbone=name), "weights_backbone") == fetched
    assert asked == [name]
    with pytest.raises(MissingFileError, match=r"detection.weights: 'nope.pth' is neither a file nor"):
        trained.weights_path(DetectionConfig(weights="nope.pth"), "weights")
