"""configs/released: one config per file the authors released, evaluating it as they tested it.
Every config builds the network its file belongs to and takes the file's every blob (the released
layout, as the exporter names it) and runs ``nonlocalnet eval`` on synthetic videos from a file
the exporter writes under the released name; one file is also downloaded by name from a
127.0.0.1 server and converted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from weights_server import RELEASED

from nonlocalnet.models import (
    RELEASED_CHECKPOINTS,
    ReleasedModelMismatchError,
    build_model,
    check_model_matches,
    get_weights,
    load_caffe2_checkpoint,
)
from nonlocalnet.models.caffe2 import torch_to_caffe2_name
from nonlocalnet.models.download import CACHE_DIR_ENV
from nonlocalnet.models.zoo import MIRROR_ENV
from nonlocalnet.tasks import load_config
from nonlocalnet.tasks.video import build_model_from_config, run_evaluation

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "released").glob("*.yaml"))


def test_one_config_per_released_file():
    assert sorted(p.stem + ".pkl" for p in CONFIGS) == sorted(RELEASED_CHECKPOINTS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_is_the_network_and_test_of_its_file(path):
    cfg = load_config(path)
    info = RELEASED_CHECKPOINTS[path.stem + ".pkl"]
    data = cfg.data
    assert (data.clip_length, data.stride) == (info.frames, info.sample_rate)  # the authors' clips
    # the authors' test: short side 256, 10 clips x 3 crops of 256 x 256, the training crop's window
    assert (data.test_short, data.test_crop, data.num_clips, data.num_crops, data.crop) == (
        256,
        256,
        10,
        3,
        224,
    )
    assert cfg.model.num_classes == 400 and cfg.model.init == path.stem  # the weights it evaluates
    entry = get_weights(path.stem)
    text = path.read_text()
    assert (
        f"top-1 {entry.top1}, top-5 {entry.top5}" in text and f"--config configs/released/{path.name}" in text
    )
    with torch.device("meta"):  # shapes only: the full networks, built in no time
        model = build_model_from_config(cfg.model)
        released = build_model(info.model, variant="released", backbone_norm=info.backbone_norm)
    check_model_matches(model, info)
    # every blob of the released layout (the exporter's names, the file's network's shapes) loads
    blobs = {
        torch_to_caffe2_name(k): np.zeros(v.shape, np.float32)  # calloc'd: never touched
        for k, v in released.state_dict().items()
        if torch_to_caffe2_name(k) is not None
    }
    if info.backbone_norm == "affine":
        assert not any(name.endswith("_bn_riv") for name in blobs)
    report = load_caffe2_checkpoint(model, blobs)
    assert report.ok and len(report.loaded) == len(blobs)


def _tiny_val(root: Path) -> dict[str, str]:
    """Two 12-frame 32x32 videos of classes 3 and 7 of 400, as data overrides."""
    from tiny_video import moving_square, write_video

    (root / "videos").mkdir(parents=True)
    for name, seed in (("a", 0), ("b", 1)):
        write_video(root / "videos" / f"{name}.mp4", moving_square((220, 30, 30), seed=seed))
    (root / "val.txt").write_text("videos/a.mp4 3\nvideos/b.mp4 7\n")
    (root / "classes.txt").write_text("\n".join(f"class {i}" for i in range(400)) + "\n")
    return {
        "data.val_list": str(root / "val.txt"),
        "data.root": str(root),
        "data.class_names": str(root / "classes.txt"),
    }


def _tiny_eval(tmp_path: Path) -> list[str]:
    """Overrides that evaluate a released config on :func:`_tiny_val`'s videos, 2 views of 32 px."""
    tiny = _tiny_val(tmp_path / "k400")
    small = ["data.test_short=32", "data.test_crop=32", "data.crop=32", "data.num_clips=2"]
    small += ["data.num_crops=1", "data.num_workers=0", "train.progress=false"]
    return [f"{k}={v}" for k, v in tiny.items()] + small + [f"output_dir={tmp_path / 'run'}"]


@pytest.mark.slow
def test_the_released_config_evaluates_the_file_by_name(released_cache, monkeypatch, tmp_path):
    cache, _ = released_cache
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # nothing to download: converted once
    overrides = _tiny_eval(tmp_path)
    cfg = load_config(ROOT / "configs" / "released" / f"{RELEASED}.yaml", overrides)
    result = run_evaluation(cfg, RELEASED)
    report = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert report["checkpoint"] == str(cache / f"{RELEASED}.safetensors")
    assert result.views_per_video == 2 and report["num_videos"] == 2 and report["incomplete_videos"] == []
    wrong = load_config(
        ROOT / "configs" / "released" / f"{RELEASED}.yaml", [*overrides, "model.variant=paper"]
    )
    with pytest.raises(ReleasedModelMismatchError, match="model.variant: paper"):
        run_evaluation(wrong, RELEASED)


def test_reproduce_page_has_every_command_and_the_authors_numbers():
    text = (ROOT / "docs" / "reproduce.md").read_text()
    for path in CONFIGS:
        e = get_weights(path.stem)
        assert f"nonlocalnet eval --config configs/released/{path.stem}.yaml $DATA" in text
        paper = str(e.paper_metrics["top1"]) if e.paper_metrics else "-"
        clips, bn = f"{e.frames}x{e.sample_rate}", "frozen" if e.backbone_norm == "affine" else "BN"
        row = f"| `{path.stem}` | `{e.model}` | {clips} | {bn} |"
        assert row in text and f"| {e.top1} | {e.top5} | {paper} |" in text.split(row, 1)[1].split("\n", 1)[0]


def test_eval_with_a_released_config_takes_the_weights_its_model_init_names(monkeypatch, tmp_path):
    """``nonlocalnet eval --config configs/released/NAME.yaml`` evaluates the weights NAME (the
    config's ``model.init``); ``--checkpoint`` still wins; a config without a weights name needs it."""
    import nonlocalnet.tasks.video as video
    from nonlocalnet.cli import main

    asked = []

    class Report:
        def summary(self) -> str:
            return "summary"

    def run_evaluation(cfg, weights, **_):
        asked.append(weights)
        return Report()

    monkeypatch.setattr(video, "run_evaluation", run_evaluation)
    config = str(ROOT / "configs" / "released" / f"{RELEASED}.yaml")
    out = f"output_dir={tmp_path}"
    assert main(["eval", "--config", config, out]) == 0
    assert main(["eval", "--config", config, "--checkpoint", "other.safetensors", out]) == 0
    assert asked == [RELEASED, "other.safetensors"]
    plain = ROOT / "configs" / "c2d_r50.yaml"
    assert main(["eval", "--config", str(plain), out]) == 2
    assert len(asked) == 2


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_evaluates_a_file_in_the_released_layout(path, tmp_path, monkeypatch):
    """Every released config runs ``eval`` (its network, clip geometry and 10 x 3 protocol made
    small) on 2 synthetic videos from a file the exporter writes in the authors' layout under the
    released name (which loads only into its own network): both views of every video scored,
    a softmax average over the 400 classes."""
    import pickle

    from nonlocalnet.models.caffe2 import export_caffe2_blobs

    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # the file is given: nothing to download
    cfg = load_config(path, _tiny_eval(tmp_path))
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model)
    file = tmp_path / f"{path.stem}.pkl"
    with open(file, "wb") as f:  # protocol 4: the same blobs, written faster than the release's 2
        pickle.dump({"blobs": export_caffe2_blobs(model)}, f, protocol=4)
    scores = tmp_path / "scores.npz"
    result = run_evaluation(cfg, file, save_scores=scores)
    report = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert result.views_per_video == 2 and report["num_videos"] == 2 and report["incomplete_videos"] == []
    saved = np.load(scores)
    assert saved["scores"].shape == (2, 400) and np.isfinite(saved["scores"]).all()
    assert np.allclose(saved["scores"].sum(1), 1.0, atol=1e-4)  # softmax averaged over the views
