"""``nonlocalnet eval`` output files and labels (issue 17, items 6 and 9): ``per_class.csv`` is
real CSV, ``eval.json`` is strict JSON (``null`` for a class without videos), and a validation
tree is labelled by the model's class list, not by numbering its own folders."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_video import tiny_config

from nonlocalnet.engine.checkpoint import save_checkpoint
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.models import save_weights
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import ViewScores, build_model_from_config, run_evaluation


def _strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _config(tiny_data, tmp_path: Path, num_classes: int, **data):
    cfg = tiny_config(tiny_data, tmp_path / "run", data=data)
    cfg["model"]["num_classes"] = num_classes
    return config_from_dict(cfg)


def _biased_model(cfg, favourite: int):
    """A model whose every softmax puts almost all mass on class ``favourite``."""
    model = build_model_from_config(cfg.model)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[favourite] = 20.0
    return model


def test_eval_result_dict_uses_none_for_a_class_without_videos():
    scores = ViewScores(num_classes=3, views_per_video=1)
    scores.add(0, 0, torch.tensor([0.8, 0.1, 0.1]), 0)
    scores.add(1, 0, torch.tensor([0.1, 0.8, 0.1]), 1)
    result = scores.result()
    assert result.per_class_accuracy[:2] == [1.0, 1.0] and math.isnan(result.per_class_accuracy[2])
    d = result.to_dict()
    assert d["per_class_accuracy"] == [1.0, 1.0, None]
    assert _strict_json(json.dumps(d, allow_nan=False))["per_class_accuracy"] == [1.0, 1.0, None]


def test_the_strict_parser_of_these_tests_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        _strict_json('{"a": NaN}')


def test_eval_files_quote_class_names_and_write_null_for_an_empty_class(tmp_path, tiny_data):
    names = tmp_path / "classes.txt"
    names.write_text("red, dark\nblue\ngreen\n")  # the list's labels are 0 and 1: no green video
    cfg = _config(tiny_data, tmp_path, 3, class_names=str(names))
    weights = tmp_path / "model.safetensors"
    save_weights(_biased_model(cfg, favourite=0), weights)
    out = tmp_path / "eval"
    result = run_evaluation(cfg, weights, output_dir=out)
    assert result.num_videos == 8

    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["class", "accuracy", "videos"],
        ["red, dark", "1.000000", "4"],
        ["blue", "0.000000", "4"],
        ["green", "", "0"],
    ]
    report = _strict_json((out / "eval.json").read_text())
    assert report["per_class_accuracy"] == [1.0, 0.0, None]
    assert report["class_names"] == ["red, dark", "blue", "green"]
    with open(out / "confusion.csv", newline="") as f:
        assert next(csv.reader(f)) == ["true \\ predicted", "red, dark", "blue", "green"]


def _folder_tree(tiny_data, root: Path, classes: list[str]) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for video in sorted((tiny_data["root"] / "videos").glob(f"{name}_*.mp4")):
            shutil.copy(video, root / name / video.name)
    return root


def test_a_val_tree_with_one_class_is_labelled_by_the_training_tree(tmp_path, tiny_data):
    train = _folder_tree(tiny_data, tmp_path / "train", ["blue", "red"])
    val = _folder_tree(tiny_data, tmp_path / "val", ["red"])
    cfg = _config(
        tiny_data,
        tmp_path,
        2,
        train_list=None,
        val_list=None,
        class_names=None,
        train_folder=str(train),
        val_folder=str(val),
    )
    weights = tmp_path / "model.safetensors"
    save_weights(_biased_model(cfg, favourite=1), weights)  # "red" in the training tree's order
    out = tmp_path / "eval"
    result = run_evaluation(cfg, weights, output_dir=out)
    assert result.video_top1 == 1.0 and result.num_videos == 4  # was 0.0: val numbered red as 0
    report = _strict_json((out / "eval.json").read_text())
    assert report["class_names"] == ["blue", "red"]
    assert report["per_class_accuracy"] == [None, 1.0]


def test_eval_of_a_training_checkpoint_labels_a_val_tree_by_the_checkpoints_classes(tmp_path, tiny_data):
    val = _folder_tree(tiny_data, tmp_path / "val", ["red"])
    cfg = _config(
        tiny_data, tmp_path, 2, train_list=None, val_list=None, class_names=None, val_folder=str(val)
    )
    model = _biased_model(cfg, favourite=1)
    ckpt = save_checkpoint(
        tmp_path / "iter_00000001.pt", {"model": model.state_dict(), "class_names": ["blue", "red"]}
    )
    result = run_evaluation(cfg, ckpt, output_dir=tmp_path / "eval")
    assert result.video_top1 == 1.0
    assert np.array_equal(result.confusion, [[0, 0], [0, 4]])


def test_a_checkpoints_class_names_must_agree_with_the_class_names_file(tmp_path, tiny_data):
    cfg = _config(tiny_data, tmp_path, 2)  # class_names file: red, blue; the list's labels 0, 1
    state = _biased_model(cfg, favourite=0).state_dict()
    numbered = save_checkpoint(tmp_path / "numbered.pt", {"model": state, "class_names": ["0", "1"]})
    run_evaluation(cfg, numbered, output_dir=tmp_path / "a")  # trained on integer labels: the file names them
    assert _strict_json((tmp_path / "a" / "eval.json").read_text())["class_names"] == ["red", "blue"]
    named = save_checkpoint(tmp_path / "named.pt", {"model": state, "class_names": ["blue", "red"]})
    with pytest.raises(ConfigError, match=r"data\.class_names.*differ"):
        run_evaluation(cfg, named, output_dir=tmp_path / "b")
