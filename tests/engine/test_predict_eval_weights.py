"""``nonlocalnet predict`` and ``eval`` take every weights file a user has (issue 31, items 10
and 12): a training checkpoint, a run's own ``model.safetensors`` (its ``config.yaml`` next to
it), converted weights with ``--model NAME`` or ``--config``; weights that determine no model,
or another model, are errors that name the flag to pass. ``eval --save-scores`` writes every
video's scores (CSV or NPZ) and the summary counts and names the videos with missing views."""

from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_video import tiny_config, write_config

from nonlocalnet.cli import main
from nonlocalnet.engine import save_config
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import build_model, read_model_file, save_weights
from nonlocalnet.tasks import VideoClassification, config_from_dict
from nonlocalnet.tasks.video import (
    EvalReport,
    build_model_from_config,
    inference_config,
    load_trained_model,
    predict_video,
    run_evaluation,
)


def _biased(cfg, favourite: int):
    """A model whose every softmax puts almost all mass on class ``favourite``."""
    model = build_model_from_config(cfg.model)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[favourite] = 20.0
    return model


def _run_folder(tiny_data, folder: Path, favourite: int = 1) -> Path:
    """What a finished run leaves: config.yaml, classes.txt and model.safetensors (its metadata
    names the registry model its config starts from)."""
    cfg = config_from_dict(tiny_config(tiny_data, folder))
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "classes.txt").write_text("red\nblue\n")
    save_weights(_biased(cfg, favourite), folder / "model.safetensors", metadata={"model": cfg.model.name})
    return folder / "model.safetensors"


def _stub(path: Path, *, classes: int = 400, bn: bool = True, **metadata: str) -> Path:
    """The tensors :func:`inference_config` reads of a full-size weights file, for cheap checks."""
    state = {"fc.weight": torch.zeros(classes, 2048), "bn1.weight": torch.ones(64)}
    if bn:
        state |= {"bn1.running_mean": torch.zeros(64), "bn1.running_var": torch.ones(64)}
    save_weights(state, path, metadata=metadata or None)
    return path


def _pkl_stub(path: Path, *, affine: bool = False) -> Path:
    blobs = {"pred_w": np.zeros((400, 2048), np.float32), "res_conv1_bn_s": np.ones(64, np.float32)}
    if not affine:
        blobs["res_conv1_bn_rm"] = np.zeros(64, np.float32)
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """As ``convert-caffe2`` writes the authors' c2d_baseline_8x8: the released variant's state
    dict (3 classes here) and its metadata."""
    net = build_model("c2d_r50_8x8", num_classes=3, variant="released")
    path = tmp_path_factory.mktemp("converted") / "c2d_8x8.safetensors"
    save_weights(net, path, metadata={"model": "c2d_r50_8x8", "variant": "released"})
    return path


def test_predict_takes_a_runs_model_safetensors_with_its_config_and_class_names(tmp_path, tiny_data, capsys):
    weights = _run_folder(tiny_data, tmp_path / "run")
    video = str(tiny_data["root"] / "videos" / "red_0.mp4")
    assert main(["predict", video, "--checkpoint", str(weights), "--clips", "1", "--crops", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(1 views averaged)" in lines[0] and lines[1].split()[1] == "blue"  # classes.txt of the run
    names = tmp_path / "names.txt"
    names.write_text("rouge\nbleu\n")
    argv = ["predict", video, "--checkpoint", str(weights), "--clips", "1", "--crops", "1"]
    assert main([*argv, "--class-names", str(names)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "bleu"
    names.write_text("a\nb\nc\n")
    assert main([*argv, "--class-names", str(names)]) == 2
    assert "lists 3 class names; the model has 2 classes" in capsys.readouterr().err


def test_converted_weights_build_their_network_without_a_config(converted, tiny_data, one_thread):
    model, cfg, names = load_trained_model(converted)  # the metadata names the network
    m = cfg.model
    assert (m.name, m.variant, m.backbone_norm, m.num_classes) == ("c2d_r50_8x8", "released", "batchnorm", 3)
    assert (cfg.data.clip_length, cfg.data.stride) == (8, 8)  # the model's frame geometry
    assert (cfg.data.num_clips, cfg.data.num_crops, cfg.data.test_short) == (10, 3, 256)  # the paper's test
    assert names == ["0", "1", "2"]
    saved = read_model_file(converted).state
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    cfg.data.num_clips, cfg.data.num_crops, cfg.data.test_short, cfg.data.test_crop = 1, 1, 32, 32
    pred = predict_video(model, tiny_data["root"] / "videos" / "red_0.mp4", cfg, names, topk=2)
    assert pred.views == 1 and len(pred.top) == 2


def test_the_network_of_weights_without_a_config_comes_from_model(tmp_path):
    # a state dict of a registry model (no metadata): --model names it, the file gives the rest
    plain = read_model_file(_stub(tmp_path / "plain.safetensors", classes=7))
    cfg = inference_config(
        plain, model="i3d_nl5_r50", overrides=["data.val_list=val.csv", "data.num_clips=2"]
    )
    assert (cfg.model.name, cfg.model.backbone_norm, cfg.model.variant, cfg.model.num_classes) == (
        "i3d_nl5_r50",
        "batchnorm",
        "paper",
        7,
    )
    assert (cfg.data.clip_length, cfg.data.stride, cfg.data.num_clips) == (32, 2, 2)
    assert cfg.data.val_list == "val.csv" and cfg.model.init == "none"
    frozen = read_model_file(_stub(tmp_path / "frozen.safetensors", bn=False))
    assert inference_config(frozen, model="c2d_r50").model.backbone_norm == "affine"
    # the authors' .pkl by its released name: model, BN form and clips from the authors' table
    pkl = read_model_file(_pkl_stub(tmp_path / "i3d_nonlocal_32x4_I3D_pretrain_400k.pkl", affine=True))
    cfg = inference_config(pkl)
    assert (cfg.model.name, cfg.model.backbone_norm, cfg.model.variant) == (
        "i3d_nl5_r50_8x8",
        "affine",
        "released",
    )
    assert (cfg.data.clip_length, cfg.data.stride) == (32, 4)


def test_weights_that_determine_no_model_or_another_name_the_flag(tmp_path, tiny_data, capsys):
    video = str(tiny_data["root"] / "videos" / "red_0.mp4")
    stub = _stub(tmp_path / "w.safetensors", model="c2d_r50_8x8")  # a run's file, copied alone

    def refused(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err

    refused(
        ["predict", video, "--checkpoint", str(stub)],
        "without a config",
        "--config CFG",
        "--model NAME",
        "its metadata names 'c2d_r50_8x8': --model c2d_r50_8x8",
    )
    refused(["eval", "--checkpoint", str(stub)], "--config CFG", "--model c2d_r50_8x8")
    refused(
        ["predict", video, "--checkpoint", str(stub), "--model", "i3d_r50"],
        "holds the weights of c2d_r50_8x8 (by its metadata), not of i3d_r50: pass --model c2d_r50_8x8",
    )
    refused(["eval", "--checkpoint", str(stub), "--model", "c2d_r5"], "unknown model 'c2d_r5'")
    config = write_config(tmp_path / "tiny.yaml", tiny_config(tiny_data, tmp_path / "run"))
    refused(
        ["predict", video, "--checkpoint", str(stub), "--config", str(config), "--model", "c2d_r50"],
        "not both",
    )
    pkl = _pkl_stub(tmp_path / "my_finetuned.pkl")
    refused(["eval", "--checkpoint", str(pkl)], "not a released file name", "--config CFG", "--model NAME")
    known = _pkl_stub(tmp_path / "c2d_baseline_8x8_IN_pretrain_400k.pkl")
    refused(
        ["predict", video, "--checkpoint", str(known), "--model", "c2d_r50"],
        "holds the weights of c2d_r50_8x8 (by its file name), not of c2d_r50",
    )


def test_the_authors_weights_under_a_config_of_another_network_are_refused(converted, tmp_path, tiny_data):
    # the tiny config (variant paper, other stages) for the authors' weights: the error names the keys
    names = tmp_path / "classes.txt"
    names.write_text("red\nblue\ngreen\n")
    model, data = {"num_classes": 3}, {"class_names": str(names)}
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", model=model, data=data))
    with pytest.raises(InvalidValueError, match=r"c2d_r50_8x8 \(released variant.*model\.name=c2d_r50_8x8"):
        run_evaluation(cfg, converted, output_dir=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_weights_that_do_not_fit_the_config_say_what_differs(tmp_path, tiny_data):
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run"))
    three = config_from_dict(tiny_config(tiny_data, tmp_path / "run", model={"num_classes": 3}))
    path = tmp_path / "three.safetensors"
    save_weights(build_model_from_config(three.model), path)
    with pytest.raises(
        ConfigError, match=r"2 of another shape \(e\.g\. fc\.weight \(3, 32\) \(the model's \(2, 32\)\)"
    ):
        run_evaluation(cfg, path, output_dir=tmp_path / "eval")


def _val_with_a_broken_video(tiny_data, folder: Path) -> Path:
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    lines = tiny_data["list"].read_text().splitlines()
    listed = folder / "val.txt"
    listed.write_text("\n".join([*lines[:2], f"{folder / 'broken.mp4'} 1", *lines[2:]]) + "\n")
    return listed


def test_eval_saves_every_videos_scores_and_counts_the_missing_views(tmp_path, tiny_data, capsys):
    weights = _run_folder(tiny_data, tmp_path / "run", favourite=0)
    val = _val_with_a_broken_video(tiny_data, tmp_path / "val")
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(weights), "--output", str(out), "--save-scores", str(out / "s.csv")]
    overrides = [f"data.val_list={val}", f"data.root={tiny_data['root']}", "data.bad_data_threshold=0.5"]
    overrides += ["data.num_clips=1", "data.num_crops=2"]
    assert main([*argv, *overrides]) == 0  # the run's config.yaml: no --config
    printed = capsys.readouterr().out
    assert "missing views: 1 of 9 videos" in printed and "1 not scored" in printed
    assert str(tmp_path / "val" / "broken.mp4") in printed and "per-video scores written to" in printed
    with open(out / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows] == [str(i) for i in range(9)]
    broken = rows[2]
    assert broken["path"].endswith("broken.mp4") and broken["views"] == "0" and broken["predicted"] == ""
    assert broken["label_name"] == "blue" and broken["score_0"] == ""
    for row in rows[:2] + rows[3:]:
        assert row["views"] == "2" and row["predicted"] == "0" and row["predicted_name"] == "red"
        assert row["top5"] == "0 1"
        assert float(row["score_0"]) + float(row["score_1"]) == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["path"] == str(tiny_data["root"] / "videos" / "red_0.mp4") and rows[0]["label"] == "0"


def test_eval_scores_as_npz_and_a_wrong_suffix_before_evaluating(tmp_path, tiny_data):
    weights = _run_folder(tiny_data, tmp_path / "run", favourite=1)
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", data={"num_clips": 1, "num_crops": 1}))
    with pytest.raises(
        ConfigError, match=r"--save-scores .*s\.txt: unknown format '\.txt'; name a \.csv or \.npz"
    ):
        run_evaluation(cfg, weights, output_dir=tmp_path / "eval", save_scores=tmp_path / "s.txt")
    assert not (tmp_path / "eval").exists()
    report = run_evaluation(cfg, weights, output_dir=tmp_path / "eval", save_scores=tmp_path / "s.npz")
    assert isinstance(report, EvalReport) and report.missing_views() == []
    assert "missing views: none (all 8 videos scored with 1 views)" in report.summary()
    saved = np.load(tmp_path / "s.npz", allow_pickle=False)
    assert saved["scores"].shape == (8, 2) and saved["scores"].dtype == np.float32
    assert saved["predicted"].tolist() == [1] * 8 and saved["labels"].tolist() == [0] * 4 + [1] * 4
    assert saved["top5"].shape == (8, 2) and saved["views"].tolist() == [1] * 8
    assert saved["class_names"].tolist() == ["red", "blue"] and int(saved["views_per_video"]) == 1
    assert saved["paths"][0].endswith("red_0.mp4")


def test_the_summary_names_a_few_videos_with_fewer_views():
    report = EvalReport(
        clip_top1=1.0,
        clip_top5=1.0,
        video_top1=1.0,
        video_top5=1.0,
        num_videos=9,
        views_per_video=30,
        per_class_accuracy=[1.0],
        confusion=np.array([[9]]),
        paths=[f"v{i}.mp4" for i in range(10)],
        views_used=[30, 12, 29, 0, 1, 2, 3, 4, 30, 30],
    )
    text = report.summary(show=3)
    assert "missing views: 7 of 10 videos" in text
    assert (
        "6 scored with fewer than 30 views (their average): v1.mp4 (12/30), v2.mp4 (29/30), "
        "v4.mp4 (1/30) and 3 more" in text
    )
    assert "1 not scored (no view decoded; not in the accuracies): v3.mp4" in text
    assert report.to_dict()["missing_views"][:2] == [
        {"path": "v1.mp4", "views": 12},
        {"path": "v2.mp4", "views": 29},
    ]


def test_eval_of_a_run_folder_copied_elsewhere_without_its_config(tmp_path, tiny_data, capsys):
    weights = _run_folder(tiny_data, tmp_path / "run")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(weights, alone / "model.safetensors")
    assert main(["eval", "--checkpoint", str(alone / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "without a config" in err and "--config CFG" in err and "--model c2d_r50" in err


def test_the_video_task_loads_weights_predicts_and_sets_the_epoch(tmp_path, tiny_data):
    """The Task members the engine's evaluate/predict use: ``load_weights`` checks the file
    against the config, ``predict`` gives predict_video's top classes as plain data."""
    weights = _run_folder(tiny_data, tmp_path / "run")
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path / "run", data={"num_clips": 1, "num_crops": 1}))
    task = VideoClassification(cfg)
    model, _ = task.build_model()
    assert task.load_weights(model, weights) == f"weights from {weights}"
    video = str(tiny_data["root"] / "videos" / "red_0.mp4")
    [found] = task.predict(model.eval(), [video], device=torch.device("cpu"))
    expected = predict_video(model, video, cfg, task.class_names)
    assert found == {
        "path": video,
        "top": [{"label": name, "probability": p} for name, p in expected.top],
        "views": 1,
    }
    assert found["top"][0]["label"] == task.class_names[1]  # the biased class
    assert task.memory_format(model, torch.device("cpu")) == torch.contiguous_format
    loader = task.train_loader(distributed=None, num_workers=0)
    task.set_epoch(loader, 3)
    assert loader.sampler.epoch == 3
    three = config_from_dict(tiny_config(tiny_data, tmp_path / "run", model={"num_classes": 3}))
    with pytest.raises(ConfigError, match="does not fit the model the config builds"):
        task.load_weights(build_model_from_config(three.model), weights)
