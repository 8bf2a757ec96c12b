"""The built-in long-range task: deterministic, correctly labelled on decoded videos, cached."""

import json
import re
import shutil
from dataclasses import replace

import av
import numpy as np
import pytest

from nonlocalnet.demo import synthetic
from nonlocalnet.demo.synthetic import (
    CLASS_NAMES,
    PALETTE,
    LongRangeTaskConfig,
    additive_ceiling,
    generate_long_range_dataset,
    load_synthetic_dataset,
    render_video,
)

SMALL = LongRangeTaskConfig(num_train=12, num_val=8, seed=3)


def decode(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def all_frames(ds):
    return {m["path"]: decode(ds.root / m["path"]) for split in ("train", "val") for m in ds.metadata(split)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_long_range_dataset(tmp_path_factory.mktemp("synthetic"), SMALL, progress=False)


def nearest_color(pixels):
    palette = np.array([rgb for _, rgb in PALETTE[: SMALL.num_colors]], dtype=float)
    mean = pixels.reshape(-1, 3).astype(float).mean(0)
    dist = np.linalg.norm(palette - mean, axis=1)
    return int(dist.argmin()), float(dist.min())


def test_render_video_shape_and_metadata():
    video, meta = render_video(SMALL, np.random.default_rng(0))
    assert video.shape == (SMALL.num_frames, SMALL.height, SMALL.width, 3) and video.dtype == np.uint8
    assert meta["label"] in (0, 1) and meta["label_name"] == CLASS_NAMES[meta["label"]]
    assert (meta["early"]["color_index"] == meta["late"]["color_index"]) == (meta["label"] == 1)
    video2, meta2 = render_video(SMALL, np.random.default_rng(0))
    assert np.array_equal(video, video2) and meta == meta2


def test_files_and_formats(dataset):
    root = dataset.root
    assert dataset.class_names == CLASS_NAMES == ("different", "same")
    assert (root / "classes.txt").read_text() == "different\nsame\n"
    for split, n, path in (("train", 12, dataset.train_list), ("val", 8, dataset.val_list)):
        lines = path.read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            assert re.fullmatch(rf"videos/{split}_\d{{5}}\.mp4 [01]", line), line
            assert (root / line.split()[0]).is_file()
        meta = dataset.metadata(split)
        assert [f"{m['path']} {m['label']}" for m in meta] == lines
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"] == SMALL.to_json()
    assert LongRangeTaskConfig.from_json(manifest["config"]) == SMALL
    assert load_synthetic_dataset(root) == dataset


def test_class_balance(dataset):
    for split, n in (("train", 12), ("val", 8)):
        labels = [m["label"] for m in dataset.metadata(split)]
        assert labels.count(0) == labels.count(1) == n // 2


def test_labels_correct_on_decoded_videos(dataset):
    for split in ("train", "val"):
        for m in dataset.metadata(split):
            video = decode(dataset.root / m["path"])
            assert video.shape == (SMALL.num_frames, SMALL.height, SMALL.width, 3)
            found = []
            for cue in (m["early"], m["late"]):
                x0, y0, x1, y1 = cue["box"]
                start, stop = cue["frames"]
                # the cue's interior (1 px margin against codec ringing) over its visible frames
                color, dist = nearest_color(video[start:stop, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1])
                assert dist < 25, (m["path"], cue, dist)
                assert color == cue["color_index"] and PALETTE[color][0] == cue["color"]
                found.append(color)
            assert int(found[0] == found[1]) == m["label"], m["path"]


V3 = LongRangeTaskConfig(
    num_frames=16, height=32, width=32, object_size=8, cue_frames=4, cue_window=None, seed=3
)


@pytest.mark.parametrize("cfg", [SMALL, V3, replace(SMALL, num_frames=12, cue_window=3, cue_frames=2)])
def test_cues_are_far_apart_in_space_and_time(cfg):
    t, half, window = cfg.num_frames, min(cfg.height, cfg.width) / 2, cfg.window
    assert window == (t // 4 if cfg.cue_window is None else cfg.cue_window)
    starts = set()
    for i in range(60):
        _, m = render_video(cfg, np.random.default_rng(i))
        early, late = m["early"], m["late"]
        (cx1, cy1), (cx2, cy2) = early["center"], late["center"]
        assert np.hypot(cx1 - cx2, cy1 - cy2) >= half
        assert 0 <= early["frames"][0] and early["frames"][1] <= window
        assert t - window <= late["frames"][0] and late["frames"][1] <= t
        assert (
            early["frames"][1] - early["frames"][0] == late["frames"][1] - late["frames"][0] == cfg.cue_frames
        )
        assert late["frames"][0] - (early["frames"][1] - 1) == m["frame_gap"] >= cfg.min_frame_gap
        starts.add((early["frames"][0], late["frames"][0]))
        for cue in (early, late):
            x0, y0, x1, y1 = cue["box"]
            assert 0 <= x0 < x1 <= cfg.width and 0 <= y0 < y1 <= cfg.height
    # every start the window allows occurs (the cues' timing is random inside their windows)
    assert {a for a, _ in starts} == set(range(window - cfg.cue_frames + 1))
    assert min(g for _, g in starts) == t - window
    assert cfg.min_frame_gap == t - 2 * window + 1


def test_the_default_task_shows_each_cue_once_at_the_two_ends_of_the_video():
    cfg = LongRangeTaskConfig()
    assert (cfg.num_frames, cfg.cue_frames, cfg.window, cfg.min_frame_gap) == (6, 1, 1, 5)


def test_distractors_share_the_palette_and_span_the_clip(dataset):
    metas = dataset.metadata("train") + dataset.metadata("val")
    counts = [len(m["distractors"]) for m in metas]
    assert min(counts) >= SMALL.distractors[0] and max(counts) <= SMALL.distractors[1]
    for m in metas:
        for d in m["distractors"]:
            assert 0 <= d["color_index"] < SMALL.num_colors and len(d["boxes"]) == SMALL.num_frames


def test_deterministic_from_seed(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_CHUNK", 5)  # several tasks per split for the two processes
    again = generate_long_range_dataset(tmp_path / "again", SMALL, progress=False, workers=2)
    assert (again.root / "manifest.json").read_text() == (dataset.root / "manifest.json").read_text()
    assert again.train_list.read_text() == dataset.train_list.read_text()
    assert again.val_list.read_text() == dataset.val_list.read_text()
    assert again.metadata("val") == dataset.metadata("val")
    a, b = all_frames(dataset), all_frames(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    other = generate_long_range_dataset(tmp_path / "other", replace(SMALL, seed=4), progress=False)
    assert other.metadata("train") != dataset.metadata("train")
    c = all_frames(other)
    assert not any(np.array_equal(a[k], c[k]) for k in a)


def test_cache_is_reused_without_rewriting(tmp_path):
    cfg = replace(SMALL, num_train=4, num_val=2)
    ds = generate_long_range_dataset(tmp_path, cfg, progress=False)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = generate_long_range_dataset(tmp_path, cfg, progress=False)
    assert again == ds
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_incomplete_cache_is_regenerated(tmp_path):
    cfg = replace(SMALL, num_train=4, num_val=2)
    generate_long_range_dataset(tmp_path, cfg, progress=False)
    victim = tmp_path / "videos" / "val_00001.mp4"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="missing files"):
        load_synthetic_dataset(tmp_path)
    generate_long_range_dataset(tmp_path, cfg, progress=False)
    assert victim.is_file()
    # an interrupted run leaves no manifest: not a cache
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no complete"):
        load_synthetic_dataset(tmp_path)
    generate_long_range_dataset(tmp_path, cfg, progress=False)
    assert load_synthetic_dataset(tmp_path).config == cfg


def test_config_mismatch(tmp_path):
    cfg = replace(SMALL, num_train=4, num_val=2)
    generate_long_range_dataset(tmp_path, cfg, progress=False)
    before = (tmp_path / "train.txt").read_text()
    bigger = replace(cfg, num_train=6, seed=5)
    with pytest.raises(ValueError, match="another config"):
        generate_long_range_dataset(tmp_path, bigger, progress=False, on_mismatch="error")
    assert (tmp_path / "train.txt").read_text() == before  # left as it was
    ds = generate_long_range_dataset(tmp_path, bigger, progress=False)  # default: regenerate
    assert ds.config == bigger and len(ds.train_list.read_text().splitlines()) == 6
    assert json.loads((tmp_path / "manifest.json").read_text())["config"] == bigger.to_json()
    smaller = replace(cfg, num_train=2)
    generate_long_range_dataset(tmp_path, smaller, progress=False)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "train_00000.mp4",
        "train_00001.mp4",
        "val_00000.mp4",
        "val_00001.mp4",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 10, "cue_window": None},
        {"cue_frames": 2},
        {"cue_frames": 5, "cue_window": None, "num_frames": 16},
        {"cue_window": 0},
        {"cue_window": 5},
        {"cue_window": True},
        {"cue_window": 1.0},
        {"num_frames": 1},
        {"height": 31},
        {"num_colors": 1},
        {"num_colors": len(PALETTE) + 1},
        {"object_size": 20},
        {"min_distance": 2.0},
        {"distractors": (3, 1)},
        {"noise_std": -1.0},
        {"num_val": 1},
        {"crf": 60},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        LongRangeTaskConfig(**kwargs)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="LongRangeTaskConfig"):
        generate_long_range_dataset(tmp_path, {"seed": 0}, progress=False)
    with pytest.raises(ValueError, match="on_mismatch"):
        generate_long_range_dataset(tmp_path, SMALL, progress=False, on_mismatch="ignore")
    with pytest.raises(ValueError, match="workers must be a positive int"):
        generate_long_range_dataset(tmp_path, SMALL, progress=False, workers=0)


def test_additive_ceiling():
    assert additive_ceiling(4) == 0.75 and additive_ceiling(12) == 0.75
    assert additive_ceiling(2, symmetric=True) == pytest.approx(0.75)
    assert additive_ceiling(3, symmetric=True) == pytest.approx(2 / 3)
    assert additive_ceiling(4, symmetric=True) == pytest.approx(2 / 3)
    assert additive_ceiling(6, symmetric=True) == pytest.approx(0.65)
    with pytest.raises(ValueError):
        additive_ceiling(1)


def test_an_older_format_version_is_named_when_loaded(dataset, tmp_path):
    """A cache written by an earlier version (say version 3, before cue_window) is not a foreign
    folder: the error names both versions and how to get the current one."""
    root = tmp_path / "old"
    shutil.copytree(dataset.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = 3
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="format version 3.*reads version 4"):
        load_synthetic_dataset(root)
