"""``nonlocalnet detect-predict`` and :mod:`nonlocalnet.detection.predict` on tiny untrained
detectors (random weights, every detection kept): a folder (images by extension in any case,
sorted; one PNG and one JSON entry per image; a broken file counted, named and the exit status
1), masks as COCO compressed RLE and keypoint scores in the JSON, images read upright by their
EXIF orientation, ``--device``, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from nonlocalnet.cli import main
from nonlocalnet.detection.predict import (
    choose_device,
    detections_to_json,
    find_images,
    predict_images,
    predict_path,
)
from nonlocalnet.detection.trained import predict_image, read_image
from nonlocalnet.engine.config import config_to_dict
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.detection.setup import build_detector_from_config, load_trained_detector

CLASSES, CATEGORY_IDS = ["cat", "dog"], [4, 9]
KEYPOINTS = ["nose", "tail", "left_ear", "right_ear"]


def _checkpoint(path: Path, model_name: str) -> Path:
    """A detection training checkpoint of a randomly initialised tiny detector that keeps 3
    detections of any score per image."""
    det = {
        "model": model_name,
        "min_size": [64],
        "max_size": 64,
        "model_options": {"box_score_thresh": 0.0, "box_detections_per_img": 3},
    }
    if "keypoint" in model_name:
        det["oks_sigmas"] = [0.1] * len(KEYPOINTS)
    cfg = config_from_dict({"task": "detection", "detection": det})
    torch.manual_seed(0)
    model, _ = build_detector_from_config(cfg.detection, len(CLASSES) + 1, len(KEYPOINTS))
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "class_names": CLASSES,
        "category_ids": CATEGORY_IDS,
        "keypoint_names": KEYPOINTS if "keypoint" in model_name else [],
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "mask": _checkpoint(root / "mask.pt", "maskrcnn_tiny_fpn_nl"),
        "keypoints": _checkpoint(root / "kp.pt", "keypointrcnn_tiny_fpn_nl"),
    }


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _save_with_orientation(image: Image.Image, path: Path, orientation: int) -> Path:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)
    return path


def _upright(path: Path) -> torch.Tensor:
    """The file as PIL shows it upright, float (3, H, W)."""
    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three images (one a JPEG stored 48 wide, 32 high, tagged "rotate 90" by EXIF), a
    truncated PNG, a text file and a subfolder with an image."""
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    _noise(40, 30, 0).save(images / "a.png")
    _noise(36, 44, 1).save(images / "B.JPG")
    _save_with_orientation(_noise(48, 32, 2), images / "c.jpeg", 6)
    _noise(40, 40, 3).save(images / "broken.png")
    whole = (images / "broken.png").read_bytes()
    (images / "broken.png").write_bytes(whole[: len(whole) // 2])
    (images / "notes.txt").write_text("not an image")
    _noise(20, 20, 4).save(images / "sub" / "d.png")
    return images


def test_find_images_takes_image_extensions_in_any_case_sorted(folder):
    assert [p.name for p in find_images(folder)] == ["B.JPG", "a.png", "broken.png", "c.jpeg"]
    assert find_images(folder / "notes.txt") == [folder / "notes.txt"]  # a file named: taken as it is


def test_read_image_applies_the_exif_orientation(folder):
    image = read_image(folder / "c.jpeg")
    assert image.shape == (3, 48, 32)  # stored 48 x 32, turned by 90 degrees
    assert torch.equal(image, _upright(folder / "c.jpeg"))
    with Image.open(folder / "c.jpeg") as im:
        assert im.size == (48, 32)  # the stored pixels really are sideways


def test_detect_predict_on_a_folder(folder, checkpoints, capsys):
    code = main(["detect-predict", str(folder), "--checkpoint", str(checkpoints["mask"]),
                 "--score-threshold", "0", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out  # one file failed
    results = folder.parent / "photos.detections"
    assert sorted(p.name for p in results.iterdir()) == [
        "B.JPG.png",
        "a.png.png",
        "c.jpeg.png",
        "detections.json",
    ]
    for png in results.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG"
    report = json.loads((results / "detections.json").read_text())
    assert [Path(e["image"]).name for e in report["images"]] == ["B.JPG", "a.png", "c.jpeg"]
    assert [(e["width"], e["height"]) for e in report["images"]] == [(36, 44), (40, 30), (32, 48)]
    assert [Path(e["drawing"]).name for e in report["images"]] == ["B.JPG.png", "a.png.png", "c.jpeg.png"]
    assert len(report["failed"]) == 1 and report["failed"][0]["image"] == str(folder / "broken.png")
    assert "not a readable image" in report["failed"][0]["reason"]
    assert "4 images on cpu: 3 predicted, 1 failed" in out
    assert f"FAILED {folder / 'broken.png'}" in out

    trained = load_trained_detector(checkpoints["mask"])
    for entry in report["images"]:
        pred = predict_image(trained.model, Path(entry["image"]))
        rows = entry["detections"]
        assert len(rows) == 3  # box_detections_per_img, every score kept
        assert [r["score"] for r in rows] == pytest.approx(pred["scores"].tolist())
        assert {(r["label"], r["category_id"]) for r in rows} <= {("cat", 4), ("dog", 9)}
        for row, mask in zip(rows, pred["masks"][:, 0], strict=True):
            seg = row["segmentation"]
            assert isinstance(seg["counts"], str) and seg["size"] == [entry["height"], entry["width"]]
            decoded = mask_utils.decode([{"size": seg["size"], "counts": seg["counts"].encode()}])[:, :, 0]
            assert np.array_equal(decoded, (mask > 0.5).numpy().astype(np.uint8))


def test_keypoint_scores_are_in_the_json(folder, checkpoints, tmp_path):
    trained = load_trained_detector(checkpoints["keypoints"])
    report = predict_path(trained, folder / "a.png", output=tmp_path / "a.png", json_path=tmp_path / "a.json")
    assert report.failed == [] and (tmp_path / "a.png").is_file()
    written = json.loads((tmp_path / "a.json").read_text())
    assert written == report.to_json()
    pred = predict_image(trained.model, folder / "a.png")
    keep = pred["scores"] >= 0.5
    rows = written["images"][0]["detections"]
    assert len(rows) == int(keep.sum())
    # every detection, whatever the threshold: the scores are torchvision's keypoints_scores
    rows = detections_to_json(
        pred,
        label_names=trained.label_names,
        label_to_category=trained.label_to_category,
        score_threshold=0.0,
    )
    assert len(rows) == 3
    for row, kps, scores in zip(rows, pred["keypoints"], pred["keypoints_scores"], strict=True):
        assert len(row["keypoints"]) == len(row["keypoint_scores"]) == len(KEYPOINTS)
        assert row["keypoint_scores"] == pytest.approx(scores.tolist())
        assert row["keypoints"] == [[round(v, 1) for v in kp] for kp in kps.tolist()]
        assert "segmentation" not in row


def test_a_single_image_keeps_its_defaults_and_an_unreadable_one_is_an_error(folder, checkpoints, capsys):
    ckpt = str(checkpoints["mask"])
    assert main(["detect-predict", str(folder / "c.jpeg"), "--checkpoint", ckpt, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (folder / "c.detections.png").is_file() and f"wrote {folder / 'c.detections.png'}" in out
    assert not (folder.parent / "photos.detections").exists()  # no JSON unless asked for
    assert main(["detect-predict", str(folder / "broken.png"), "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.png is not a readable image" in err
    trained = load_trained_detector(checkpoints["mask"])
    with pytest.raises(InvalidValueError, match="not a readable image"):
        predict_images(trained, [folder / "broken.png"], skip_unreadable=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "device 'gpu': expected cpu, cuda, cuda:N (e.g. cuda:1) or auto"),
        (["--device", "cuda:99"], "cuda"),
        (["--output", "{folder}"], "is the image folder itself"),
        (["--output", "{folder}/a.png"], "is a file; for a folder of images it names a folder"),
    ],
)
def test_bad_arguments_are_one_line_errors(folder, checkpoints, capsys, args, message):
    args = [a.format(folder=folder) for a in args]
    assert main(["detect-predict", str(folder), "--checkpoint", str(checkpoints["mask"]), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_missing_and_empty_sources_are_errors(tmp_path, checkpoints, capsys):
    ckpt = str(checkpoints["mask"])
    assert main(["detect-predict", str(tmp_path / "nope"), "--checkpoint", ckpt]) == 2
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    assert main(["detect-predict", str(tmp_path / "empty"), "--checkpoint", ckpt]) == 2
    assert "no image files in this folder" in capsys.readouterr().err


def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert choose_device("auto") == expected
    if torch.cuda.is_available():
        assert choose_device("cuda") == torch.device("cuda", 0)
    else:
        with pytest.raises(InvalidValueError, match="CUDA is not available"):
            choose_device("cuda:1")
