"""Validation labels are checked against the training split's class list when the task is built,
not after an epoch (where a label beyond the class count crashed ``engine/metrics.py``); listed
videos that are not there are counted before training."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny_video import tiny_config

from nonlocalnet.engine import ConfigError
from nonlocalnet.tasks import VideoClassification, config_from_dict
from nonlocalnet.tasks.video import VideoDataConfig, ViewScores, load_samples


def _config(tmp_path: Path, train: str, val: str, suffix: str = ".txt"):
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"val{suffix}").write_text(val)
    paths = {"list": tmp_path / f"train{suffix}", "classes": tmp_path / "classes.txt"}
    cfg = tiny_config(
        paths, tmp_path / "run", data={"val_list": str(tmp_path / f"val{suffix}"), "class_names": None}
    )
    return config_from_dict(cfg)


def test_a_validation_label_beyond_the_training_labels_stops_the_task_at_start(tmp_path):
    cfg = _config(tmp_path, "a.mp4 0\nb.mp4 1\n", "c.mp4 1\n\nd.mp4 2\n")
    with pytest.raises(
        ConfigError,
        match=r"data\.val_list: .*val\.txt:3: label 2 out of range \(expected \[0, 1\]\) \(the class list: "
        r"the integer labels of data\.train_list .*train\.txt \(0 to 1\)\)",
    ):
        VideoClassification(cfg)


def test_a_validation_class_name_the_training_list_lacks_stops_the_task_at_start(tmp_path):
    cfg = _config(
        tmp_path, "path,label\na.mp4,archery\nb.mp4,abseiling\n", "path,label\nc.mp4,zumba\n", ".csv"
    )
    with pytest.raises(
        ConfigError,
        match=r"val\.csv:2: unknown class name 'zumba' \(2 classes: 'abseiling', 'archery'\) \(the class "
        r"list: the 2 class names of data\.train_list .*train\.csv, sorted\)",
    ):
        VideoClassification(cfg)
    (tmp_path / "val.csv").write_text("path,label\nc.mp4,archery\n")
    task = VideoClassification(cfg)
    assert task.class_names == ["abseiling", "archery"] and [s.label for s in task.val_samples] == [1]


def test_evaluation_names_the_checkpoints_class_list(tmp_path):
    (tmp_path / "val.txt").write_text("c.mp4 cat\n")
    data = VideoDataConfig(val_list=str(tmp_path / "val.txt"))
    with pytest.raises(
        ConfigError, match=r"unknown class name 'cat'.*\(the class list: the class names saved in"
    ):
        load_samples(data, "val", class_names=["dog"], class_source="the class names saved in run/best.pt")


def test_view_scores_refuse_a_label_outside_the_classes():
    scores = ViewScores(num_classes=3, views_per_video=1)
    with pytest.raises(ValueError, match=r"video 0: label 3 is not one of the 3 classes \(0 to 2\)"):
        scores.add(0, 0, torch.full((3,), 1 / 3), 3)


def test_listed_videos_that_are_not_there_are_counted_at_start(tmp_path, caplog):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos/aaa_000001_000011.mp4").write_bytes(b"x")
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nyoga,aaa,1,11,train\nyoga,bbb,1,11,train\n")
    data = VideoDataConfig(train_list=str(csv), root=str(tmp_path / "videos"))
    with pytest.raises(
        ConfigError,
        match=r"data\.train_list: 1 of 2 listed videos \(50\.00%\) are not under data\.root .*videos "
        r"\(first: .*train\.csv:3: no bbb_000001_000011\.<ext> or bbb\.<ext>.*more than "
        r"data\.bad_data_threshold 1\.00%",
    ):
        load_samples(data, "train")
    data.bad_data_threshold = 0.5
    with caplog.at_level(logging.WARNING, logger="nonlocalnet.data"):
        samples, names = load_samples(data, "train")
    assert len(samples) == 2 and names == ["yoga"]
    assert "1 of 2 listed videos" in caplog.text and "they count as bad videos" in caplog.text
