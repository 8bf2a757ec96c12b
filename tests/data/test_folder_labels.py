"""Class-per-folder trees: one class list (the training tree's folders, or ``data.class_names``)
gives the labels of every split; a folder that is not in it is an error (issue 17, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonlocalnet.data import VideoSample, scan_class_folders
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.tasks.video import VideoDataConfig, load_samples


def _tree(root: Path, classes: dict[str, int]) -> Path:
    """``root/<class>/v<i>.mp4`` (empty files: scanning never opens them)."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"v{i}.mp4").write_bytes(b"x")
    return root


def _labels(samples: list[VideoSample]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for s in samples:
        out.setdefault(Path(s.path).parent.name, set()).add(s.label)
    return out


def test_scan_with_a_class_list_labels_by_the_list_and_rejects_unknown_folders(tmp_path):
    root = _tree(tmp_path / "val", {"red": 2, "blue": 1})
    scan = scan_class_folders(root, class_names=["red", "green", "blue"])
    assert scan.class_names == ["red", "green", "blue"]
    assert _labels(scan.samples) == {"red": {0}, "blue": {2}}
    with pytest.raises(ValueError, match=r"'blue'.*not in the class list"):
        scan_class_folders(root, class_names=["red", "green"])


def test_a_validation_tree_with_fewer_classes_uses_the_training_trees_labels(tmp_path):
    train = _tree(tmp_path / "train", {"blue": 2, "red": 2})
    val = _tree(tmp_path / "val", {"red": 2})
    data = VideoDataConfig(train_folder=str(train), val_folder=str(val))
    train_samples, train_names = load_samples(data, "train")
    val_samples, val_names = load_samples(data, "val")
    assert train_names == val_names == ["blue", "red"]
    assert _labels(train_samples) == {"blue": {0}, "red": {1}}
    assert _labels(val_samples) == {"red": {1}}  # each tree numbered its own folders: red was 0


def test_class_names_file_defines_the_labels_of_folder_trees(tmp_path):
    train = _tree(tmp_path / "train", {"blue": 1, "red": 1})
    val = _tree(tmp_path / "val", {"red": 1})
    names = tmp_path / "classes.txt"
    names.write_text("red\nblue\n")  # not sorted: the file's order is the label order
    data = VideoDataConfig(train_folder=str(train), val_folder=str(val), class_names=str(names))
    train_samples, train_names = load_samples(data, "train")
    val_samples, val_names = load_samples(data, "val")
    assert train_names == val_names == ["red", "blue"]
    assert _labels(train_samples) == {"red": {0}, "blue": {1}}
    assert _labels(val_samples) == {"red": {0}}


def test_a_folder_missing_from_the_class_list_is_an_error_naming_it(tmp_path):
    train = _tree(tmp_path / "train", {"blue": 1, "red": 1})
    val = _tree(tmp_path / "val", {"red": 1, "green": 1})
    data = VideoDataConfig(train_folder=str(train), val_folder=str(val))
    with pytest.raises(ConfigError, match=r"data\.val_folder.*'green'"):
        load_samples(data, "val")
    names = tmp_path / "classes.txt"
    names.write_text("red\n")
    data = VideoDataConfig(train_folder=str(train), val_folder=str(val), class_names=str(names))
    with pytest.raises(ConfigError, match=r"data\.train_folder.*'blue'"):
        load_samples(data, "train")


def test_a_val_folder_next_to_an_integer_labelled_train_list_needs_class_names(tmp_path):
    listed = tmp_path / "train.txt"
    listed.write_text("a.mp4 0\nb.mp4 1\n")
    val = _tree(tmp_path / "val", {"0": 1, "1": 1})
    data = VideoDataConfig(train_list=str(listed), val_folder=str(val))
    with pytest.raises(ConfigError, match=r"data\.class_names"):
        load_samples(data, "val")


def test_a_val_list_after_a_train_folder_takes_the_trees_class_names(tmp_path):
    train = _tree(tmp_path / "train", {"blue": 1, "red": 1})
    listed = tmp_path / "val.txt"
    listed.write_text("x.mp4 red\ny.mp4 0\n")
    data = VideoDataConfig(train_folder=str(train), val_list=str(listed))
    samples, names = load_samples(data, "val")
    assert names == ["blue", "red"]
    assert [s.label for s in samples] == [1, 0]
    listed.write_text("x.mp4 2\n")
    with pytest.raises(ValueError, match=r"label 2 out of range"):
        load_samples(data, "val")


def test_an_explicit_class_list_defines_the_labels_and_must_match_the_file(tmp_path):
    val = _tree(tmp_path / "val", {"red": 1})
    data = VideoDataConfig(val_folder=str(val))
    samples, names = load_samples(data, "val", class_names=["blue", "red"])
    assert names == ["blue", "red"] and _labels(samples) == {"red": {1}}
    (tmp_path / "classes.txt").write_text("red\nblue\n")
    data.class_names = str(tmp_path / "classes.txt")
    with pytest.raises(ConfigError, match=r"data\.class_names"):
        load_samples(data, "val", class_names=["blue", "red"])
