"""The detection engine path end to end on tiny generated data (64-px "context shapes" images,
tiny detectors): ``nonlocalnet detect-train`` (metrics, checkpoints, summary, curves, COCOeval,
broken images counted and never replaced), exact resume after a stop mid-epoch, a new run in a
used folder, 2-process torchrun (disjoint shards, a rank with a micro-batch of only broken images),
``detect-eval`` / ``detect-predict`` and their one-line errors, and a custom keypoint set's OKS
sigmas. The runs are in-process on one thread (bit-exact comparisons), except torchrun's."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from coco_files import OKS_SIGMAS
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from safetensors.torch import load_file

from nonlocalnet.cli import main
from nonlocalnet.demo.detection_data import ContextShapesConfig, generate_context_shapes
from nonlocalnet.engine import CheckpointManager, load_checkpoint
from nonlocalnet.engine.task import build_task
from nonlocalnet.tasks import load_config

# the module of the training step (forward_backward is recorded)
engine_step = importlib.import_module("nonlocalnet.engine.step")
ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "detection" / "coco.yaml"
SIZE = 64
SHAPES = ContextShapesConfig(
    image_size=SIZE, key_size=6, object_size=(10, 16), min_key_distance=20, min_objects=1, max_objects=2
)
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
# 16 good + 2 broken training images, batch 2: 9 steps per epoch, 18 in all; checkpoints every 4
# steps (4, 8, 12, 16: all mid-epoch) and at the end
STEPS = 18


pytestmark = pytest.mark.usefixtures("one_thread_module")  # bit-exact comparisons


def _add_broken_images(split: Path, out: Path, names: list[str]) -> None:
    """A copy of ``split`` whose annotation file also lists ``names``: ``truncated*`` written as
    half a PNG, the others missing; each with one annotated object (so training keeps it)."""
    shutil.copytree(split, out)
    data = json.loads((out / "annotations.json").read_text())
    image_id = max(im["id"] for im in data["images"])
    ann_id = max(a["id"] for a in data["annotations"])
    for name in names:
        image_id, ann_id = image_id + 1, ann_id + 1
        if name.startswith("truncated"):
            Image.new("RGB", (SIZE, SIZE), (90, 20, 20)).save(out / "images" / name)
            whole = (out / "images" / name).read_bytes()
            (out / "images" / name).write_bytes(whole[: len(whole) // 2])
        data["images"].append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
        data["annotations"].append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [10, 10, 16, 16],
                "area": 256.0,
                "iscrowd": 0,
                "segmentation": [[10, 10, 26, 10, 26, 26, 10, 26]],
                "keypoints": [10, 10, 2, 26, 10, 2, 10, 26, 2, 26, 26, 2],
                "num_keypoints": 4,
            }
        )
    (out / "annotations.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Generated train (16) and val (5) splits, and copies listing broken images: train + a
    truncated PNG and a missing file, val + a missing file."""
    root = tmp_path_factory.mktemp("shapes")
    train = generate_context_shapes(root / "train", num_images=16, seed=0, config=SHAPES)
    val = generate_context_shapes(root / "val", num_images=5, seed=0, config=SHAPES, split="val")
    _add_broken_images(root / "train", root / "train_broken", ["truncated.png", "missing.png"])
    _add_broken_images(root / "val", root / "val_broken", ["missing_val.png"])
    return {
        "train": train.images.parent,
        "val": val.images.parent,
        "train_broken": root / "train_broken",
        "val_broken": root / "val_broken",
    }


def _write_config(
    path: Path, output: Path, train_split: Path, val_split: Path | None, **sections: dict
) -> Path:
    """A detection config on the shipped COCO recipe (``base:``) with tiny settings."""
    detection = {
        "model": "maskrcnn_tiny_fpn_nl",
        "min_size": [SIZE],
        "max_size": SIZE,
        "train_images": str(train_split / "images"),
        "train_annotations": str(train_split / "annotations.json"),
        # every proposal kept (an untrained detector scores low), few per image: detections to check
        "model_options": {"box_score_thresh": 0.0, "box_detections_per_img": 6},
        "min_keypoints_per_image": 0,  # the tiny sets' images have fewer than torchvision's 10
    }
    detection |= {  # None: no validation (the recipe's COCO paths unset)
        "val_images": str(val_split / "images") if val_split is not None else None,
        "val_annotations": str(val_split / "annotations.json") if val_split is not None else None,
    }
    cfg = {
        "base": str(RECIPE),
        "output_dir": str(output),
        "detection": detection,
        "data": {"num_workers": 0, "bad_data_threshold": 0.5},
        "optim": {"base_batch_size": 8, "warmup_iters": 2},
        "train": {"epochs": 2, "log_every": 1, "progress": False},
        "checkpoint": {"every_iters": 4, "keep_last": 10},
        "eval": {"batch_size": 4},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_cli(config: Path, *args: str) -> tuple[int, str, str]:
    """``nonlocalnet detect-train --config config *args`` in this process: (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["detect-train", "--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


def _records(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("samples_per_s", None)
    return [r for r in records if r["kind"] == kind]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


_PREFIX = {"bbox": "box", "segm": "mask", "keypoints": "kp"}  # as the training log names them


def _as_logged(stats: dict, iou_type: str) -> dict:
    """COCOeval stats of ``stats.json`` (``{"bbox": {"AP": ...}}``) named as logged (``box_AP``)."""
    return {f"{_PREFIX[iou_type]}_{k}": v for k, v in stats[iou_type].items()}


def _logged(record: dict, iou_type: str) -> dict:
    return {k: v for k, v in record.items() if k.startswith(f"{_PREFIX[iou_type]}_")}


def _one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> dict:
    """The uninterrupted Mask R-CNN run on the training set with broken images (18 steps), every
    micro-batch recorded: its run folder, stdout and ``(step, used paths, broken paths)``."""
    folder = tmp_path_factory.mktemp("reference")
    config = _write_config(folder / "c.yaml", folder / "run", data["train_broken"], data["val_broken"])
    batches = []
    forward_backward = engine_step.forward_backward

    def recording(run, batch):
        batches.append((run.step, list(batch.paths), [b.path for b in batch.bad]))
        return forward_backward(run, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_step, "forward_backward", recording)
        code, out, err = _train_cli(config, "train.log_every=1")  # an override on the command line
    assert code == 0, err[-3000:]
    return {"run": folder / "run", "config": config, "out": out, "batches": batches}


def test_detect_train_writes_the_run_and_reports_broken_images(reference, data):
    run = reference["run"]
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json", "model.safetensors"):
        assert (run / name).is_file(), name
    assert (run / "classes.txt").read_text() == "match\nmismatch\n"
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iter_*.pt")) == [
        f"iter_{s:08d}.pt"
        for s in (4, 8, 9, 12, 16, STEPS)  # 9: the epoch's validation, checkpointed first
    ]
    assert (ckpts / "best.pt").is_file()

    train = _records(run, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert all(np.isfinite(r[k]) for k in (*LOSSES, "loss_mask", "loss", "lr")), r
        assert "loss_keypoint" not in r
        assert r["loss"] == pytest.approx(sum(r[k] for k in (*LOSSES, "loss_mask")), rel=1e-5)
    val = _records(run, "val")
    assert [r["step"] for r in val] == [9, STEPS]  # the end of each epoch
    for r in val:
        assert {"box_AP", "box_AP50", "mask_AP", "mask_AR100"} <= r.keys() and "kp_AP" not in r
        assert r["images"] == 5
        assert [Path(p).name for p in r["bad_images"]] == ["missing_val.png"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["final_eval"] == val[-1]
    assert summary["bad_data"]["count"] == 2
    assert sorted(Path(b["path"]).name for b in summary["bad_data"]["bad"]) == [
        "missing.png",
        "truncated.png",
    ]
    reasons = {Path(b["path"]).name: b["reason"] for b in summary["bad_data"]["bad"]}
    assert reasons["missing.png"] == "missing file" and "unreadable image" in reasons["truncated.png"]
    assert summary["val_bad_data"]["count"] == 1

    out = reference["out"]
    assert "final validation: box_AP" in out and "mask_AP" in out and "kp_AP" not in out
    assert "broken images skipped: 2" in out and f"wrote {run}" in out

    # never replaced: each epoch used every good image once, and the broken ones nowhere
    good = {str(p) for p in (data["train_broken"] / "images").glob("0*.png")}
    assert len(good) == 16
    for epoch in range(2):
        batches = [b for b in reference["batches"] if b[0] // 9 == epoch]
        used = [p for _, paths, _ in batches for p in paths]
        assert sorted(used) == sorted(good)
        assert sorted(Path(p).name for _, _, bad in batches for p in bad) == ["missing.png", "truncated.png"]
        assert all(len(paths) + len(bad) == 2 for _, paths, bad in batches)

    state = load_checkpoint(ckpts / f"iter_{STEPS:08d}.pt")
    assert state["class_names"] == ["match", "mismatch"] and state["category_ids"] == [1, 2]
    assert state["keypoint_names"] == ["left_top", "right_top", "left_bottom", "right_bottom"]
    assert state["bad_data"]["count"] == 2 and state["config"]["task"] == "detection"


def test_detect_train_on_the_hostile_coco_set(tmp_path, tiny_coco):
    # grey, RGBA, palette and JPEG images of mixed sizes and orientations, polygons and both RLEs, a
    # crowd region, images without usable objects, a truncated PNG and a missing file; 5 keypoints
    # with left/right names (flipped), on 1 of 3 categories
    coco = tiny_coco[0].parent  # images/ and annotations.json
    config = _write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        coco,
        coco,
        detection={"model": "keypointrcnn_tiny_fpn_nl", "oks_sigmas": OKS_SIGMAS},
        train={"batch_size": 1},
        checkpoint={"every_iters": 0},
    )
    code, out, err = _train_cli(config)
    assert code == 0, err[-3000:]
    assert "broken images skipped: 2" in out
    run = tmp_path / "run"
    assert (run / "classes.txt").read_text() == "person\nball\nbox\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 * 5  # 5 images with a usable object (2 of them broken), 2 epochs
    assert sorted(Path(b["path"]).name for b in summary["bad_data"]["bad"]) == ["broken.png", "missing.png"]
    final = summary["final_eval"]
    assert final["images"] == 5  # every image is evaluated, those without objects too
    assert sorted(Path(p).name for p in final["bad_images"]) == ["broken.png", "missing.png"]
    assert {"box_AP", "kp_AP"} <= final.keys()
    train = _records(run, "train")
    assert len(train) == 10 and all(np.isfinite(r["loss_keypoint"]) for r in train)


def test_too_many_broken_images_stop_the_run(tmp_path, data):
    config = _write_config(tmp_path / "c.yaml", tmp_path / "run", data["train_broken"], None)
    code, _, err = _train_cli(config, "data.bad_data_threshold=0.01")
    assert code == 1
    assert "DataQualityError" in err and "threshold" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


class _Stop(Exception):
    pass


def _train_cli_stopped_after_step_4(config) -> None:
    """Run ``config`` and stop it (as a kill would) right after the step-4 checkpoint is written."""
    save = CheckpointManager.save

    def stop_after_step_4(self, state, step):
        path = save(self, state, step)
        if step == 4:
            raise _Stop
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CheckpointManager, "save", stop_after_step_4)
        with pytest.raises(_Stop):
            _train_cli(config)


def test_a_run_stopped_mid_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path, data, reference):
    run = tmp_path / "run"
    config = _write_config(tmp_path / "c.yaml", run, data["train_broken"], data["val_broken"])
    _train_cli_stopped_after_step_4(config)
    assert not (run / "model.safetensors").exists()
    start = run / "checkpoints" / "iter_00000004.pt"

    # another detector: refused, naming the setting, before anything is written
    other = tmp_path / "other"
    code, _, err = _train_cli(
        config, "--resume", str(start), "detection.model=maskrcnn_tiny_fpn", f"output_dir={other}"
    )
    assert code == 2
    _one_line_error(err, "detection.model 'maskrcnn_tiny_fpn_nl' -> 'maskrcnn_tiny_fpn'")
    assert not other.exists()

    # other validation data: allowed, and the weights are the uninterrupted run's, bit for bit
    val = data["val"]
    code, _, err = _train_cli(
        config,
        "--resume",
        f"detection.val_images={val / 'images'}",
        f"detection.val_annotations={val / 'annotations.json'}",
    )
    assert code == 0, err[-3000:]
    _assert_same_weights(run, reference["run"])
    assert _records(run, "train") == _records(reference["run"], "train")
    val_records = _records(run, "val")
    assert [r["step"] for r in val_records] == [9, STEPS]
    assert all(r["images"] == 5 and r["bad_images"] == [] for r in val_records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bad_data"] == json.loads((reference["run"] / "summary.json").read_text())["bad_data"]
    assert summary["val_bad_data"]["count"] == 0


def test_a_new_run_in_a_used_folder_sets_the_old_checkpoints_aside(tmp_path, data, reference):
    # as for video runs (docs/training.md): the folder's checkpoints go to
    # checkpoints/superseded-<time>/, the metrics log starts anew, nothing is resumed
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run)
    ckpts = run / "checkpoints"
    old = sorted(p.name for p in ckpts.iterdir())
    config = _write_config(tmp_path / "c.yaml", run, data["train"], data["val"])
    code, _, err = _train_cli(config, "train.iterations=3")
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["best.pt", "iter_00000003.pt"]
    assert load_checkpoint(ckpts / "best.pt")["step"] == 3
    assert CheckpointManager(ckpts).latest().name == "iter_00000003.pt"
    (aside,) = ckpts.glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == old
    assert [r["step"] for r in _records(run, "train")] == [1, 2, 3]
    assert [r["step"] for r in _records(run, "val")] == [3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["bad_data"]["count"] == 0


def _eval_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["detect-eval", *args])
    return code, out.getvalue(), err.getvalue()


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_detect_eval_writes_coco_results_and_stats(tmp_path, data, reference):
    run = reference["run"]
    ckpt = run / "checkpoints" / f"iter_{STEPS:08d}.pt"
    code, out, err = _eval_cli("--checkpoint", str(ckpt), "--output", str(tmp_path / "a"), "--no-progress")
    assert code == 0, err[-3000:]
    assert "5 images, 1 unreadable" in out and "BAD " in out and "missing_val.png: missing file" in out
    detections = json.loads((tmp_path / "a" / "detections.json").read_text())
    gt = _quiet_coco(data["val_broken"] / "annotations.json")
    good_ids = {im["id"] for im in gt.dataset["images"] if im["file_name"] != "missing_val.png"}
    assert detections, "an untrained detector with box_score_thresh 0 still detects"
    with contextlib.redirect_stdout(io.StringIO()):
        gt.loadRes(detections)  # valid COCO results
    for d in detections:
        assert d["image_id"] in good_ids and d["category_id"] in (1, 2) and 0.0 <= d["score"] <= 1.0
        assert len(d["bbox"]) == 4 and d["segmentation"]["size"] == [SIZE, SIZE]
        assert "keypoints" not in d
    assert {d["image_id"] for d in detections} == good_ids
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["images"] == 5 and set(stats) == {"images", "bbox", "segm"}
    final = json.loads((run / "summary.json").read_text())["final_eval"]  # the same weights and data
    assert _as_logged(stats, "bbox") == _logged(final, "bbox")
    assert _as_logged(stats, "segm") == _logged(final, "segm")
    masks = [mask_utils.decode(d["segmentation"]).sum() for d in detections]
    assert any(m > 0 for m in masks)

    # the same weights through --config and detection.weights: the same detections (that model is
    # built as for fine-tuning, FrozenBatchNorm2d, which rounds apart from eval-mode BatchNorm2d)
    code, _, err = _eval_cli(
        "--config",
        str(run / "config.yaml"),
        f"detection.weights={run / 'model.safetensors'}",
        "--output",
        str(tmp_path / "b"),
        "--no-progress",
    )
    assert code == 0, err[-3000:]
    via_config = json.loads((tmp_path / "b" / "detections.json").read_text())
    via_checkpoint = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert len(via_config) == len(via_checkpoint) > 0
    for got, want in zip(via_config, via_checkpoint, strict=True):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    stats_b = json.loads((tmp_path / "b" / "stats.json").read_text())
    stats_a = json.loads((tmp_path / "a" / "stats.json").read_text())
    for iou_type in ("bbox", "segm"):
        assert stats_b[iou_type] == pytest.approx(stats_a[iou_type], abs=0.05)

    # detection.mask_threshold is the config's: above every probability, every mask is empty
    code, _, err = _eval_cli(
        "--checkpoint",
        str(ckpt),
        "--output",
        str(tmp_path / "c"),
        "--no-progress",
        "detection.mask_threshold=1.0",
    )
    assert code == 0, err[-3000:]
    empty = json.loads((tmp_path / "c" / "detections.json").read_text())
    assert len(empty) == len(detections)
    assert all(mask_utils.decode(d["segmentation"]).sum() == 0 for d in empty)


def test_detect_predict_draws_and_lists_the_detections(tmp_path, data, reference, capsys):
    ckpt = reference["run"] / "checkpoints" / f"iter_{STEPS:08d}.pt"
    image = data["val"] / "images" / "000001.png"
    drawn, listed = tmp_path / "drawn.png", tmp_path / "d.json"
    args = ["detect-predict", str(image), "--checkpoint", str(ckpt), "--output", str(drawn)]
    assert main([*args, "--score-threshold", "0", "--json", str(listed)]) == 0
    out = capsys.readouterr().out
    with Image.open(drawn) as im:
        assert im.format == "PNG" and im.size[0] > 0
    report = json.loads(listed.read_text())
    assert [entry["image"] for entry in report["images"]] == [str(image)] and report["failed"] == []
    rows = report["images"][0]["detections"]
    assert 0 < len(rows) <= 6  # box_detections_per_img
    assert f"{len(rows)} detections with score >= 0.0" in out.splitlines()[0]
    for row in rows:
        assert {"match": 1, "mismatch": 2}[row["label"]] == row["category_id"]
        assert 0.0 <= row["score"] <= 1.0
        x0, y0, x1, y1 = row["box_xyxy"]
        assert 0 <= x0 <= x1 <= SIZE and 0 <= y0 <= y1 <= SIZE
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)

    assert main([*args, "--score-threshold", "1.5"]) == 2
    _one_line_error(capsys.readouterr().err, "--score-threshold must be in [0, 1], got 1.5")
    assert main(["detect-predict", str(tmp_path / "nope.png"), "--checkpoint", str(ckpt)]) == 2
    _one_line_error(capsys.readouterr().err, "image not found")


def test_bad_detection_commands_are_one_line_errors(tmp_path, data, reference, tiny_coco, capsys):
    # a video config given to detect-train
    assert main(["detect-train", "--config", str(ROOT / "configs" / "c2d_r50.yaml")]) == 2
    _one_line_error(capsys.readouterr().err, "is a 'video_classification' config", "detect-train")

    # validation paths that do not exist
    config = _write_config(tmp_path / "c.yaml", tmp_path / "run", data["train"], data["val"])
    missing = tmp_path / "nowhere"
    assert main(["detect-train", "--config", str(config), f"detection.val_images={missing}"]) == 2
    _one_line_error(capsys.readouterr().err, f"detection.val_images: no such file or folder: {missing}")
    assert not (tmp_path / "run").exists()

    # detect-eval without evaluation data, without weights, without anything
    no_val = _write_config(tmp_path / "n.yaml", tmp_path / "run", data["train"], None)
    weights = reference["run"] / "model.safetensors"
    assert main(["detect-eval", "--config", str(no_val), f"detection.weights={weights}"]) == 2
    _one_line_error(capsys.readouterr().err, "detection.val_images and detection.val_annotations")
    assert main(["detect-eval", "--config", str(config)]) == 2
    _one_line_error(capsys.readouterr().err, "needs detection.weights")
    assert main(["detect-eval"]) == 2
    _one_line_error(capsys.readouterr().err, "--checkpoint")

    # a checkpoint evaluated on data of other categories: an error, not silently wrong labels
    images, annotations = tiny_coco
    ckpt = reference["run"] / "checkpoints" / f"iter_{STEPS:08d}.pt"
    code, _, err = _eval_cli(
        "--checkpoint",
        str(ckpt),
        f"detection.val_images={images}",
        f"detection.val_annotations={annotations}",
        "--output",
        str(tmp_path / "e"),
    )
    assert code == 2
    _one_line_error(err, "categories")
    assert not (tmp_path / "e").exists()


def test_a_custom_keypoint_sets_oks_sigmas_come_from_the_config(tmp_path, data):
    run = tmp_path / "run"
    config = _write_config(
        tmp_path / "c.yaml",
        run,
        data["train"],
        data["val"],
        detection={"model": "keypointrcnn_tiny_fpn_nl_nlhead"},
        train={"epochs": 1},
    )
    # 4 keypoints: COCO's 17 person sigmas do not apply, and 3 sigmas are not 4; both refused
    # when the run starts, not at its first evaluation
    for sigmas, message in ((None, "detection.oks_sigmas"), ([0.07] * 3, "detection.oks_sigmas has 3")):
        code, _, err = _train_cli(config, f"detection.oks_sigmas={json.dumps(sigmas)}")
        assert code == 2
        _one_line_error(err, message, "4 keypoints")
        assert not (run / "checkpoints").exists()

    # huge sigmas: any keypoints in an image of the right category match (OKS about 1)
    code, out, err = _train_cli(config, "detection.oks_sigmas=[10, 10, 10, 10]")
    assert code == 0, err[-3000:]
    assert "kp_AP" in out and "mask_AP" not in out
    final = json.loads((run / "summary.json").read_text())["final_eval"]
    assert final["kp_AP"] > 0 and "box_AP" in final and "mask_AP" not in final
    train = _records(run, "train")
    assert all(np.isfinite(r["loss_keypoint"]) and "loss_mask" not in r for r in train)

    # the checkpoint evaluated with tiny sigmas: no keypoint matches; the boxes score as before
    ckpt = run / "checkpoints" / "iter_00000008.pt"
    code, _, err = _eval_cli(
        "--checkpoint",
        str(ckpt),
        "--output",
        str(tmp_path / "e"),
        "--no-progress",
        "detection.oks_sigmas=[0.0001, 0.0001, 0.0001, 0.0001]",
    )
    assert code == 0, err[-3000:]
    stats = json.loads((tmp_path / "e" / "stats.json").read_text())
    assert stats["keypoints"]["AP"] == 0.0
    assert _as_logged(stats, "bbox") == _logged(final, "bbox")
    detections = json.loads((tmp_path / "e" / "detections.json").read_text())
    assert detections and all(len(d["keypoints"]) == 3 * 4 for d in detections)
    code, _, err = _eval_cli(
        "--checkpoint", str(ckpt), "--output", str(tmp_path / "f"), "detection.oks_sigmas=[0.1, 0.1]"
    )
    assert code == 2
    _one_line_error(err, "oks_sigmas has 2 values", "4 keypoints")


@pytest.mark.parametrize("model", ["maskrcnn_tiny_fpn_nl", "keypointrcnn_tiny_fpn_nl_nlhead"])
def test_the_placeholder_loss_reaches_every_trainable_parameter(tmp_path, data, model):
    # a DDP rank whose micro-batch holds only broken images runs it to join the all-reduce, which
    # (without find_unused_parameters) needs a gradient for every trainable parameter
    config = _write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        data["train"],
        None,
        detection={"model": model, "oks_sigmas": [0.07] * 4},
    )
    task = build_task(load_config(config))
    net, _ = task.build_model()
    net.train()
    loss = task.placeholder_loss(net, torch.device("cpu"), torch.contiguous_format)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (loss * 0.0).backward()
    lacking = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not lacking, lacking


_RECORDING_LAUNCHER = textwrap.dedent(
    """
    import importlib, json, os, sys
    from pathlib import Path

    engine = importlib.import_module("nonlocalnet.engine.step")
    from nonlocalnet.cli import main
    from nonlocalnet.tasks.detection import Detection

    log = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.jsonl"
    forward_backward, placeholder = engine.forward_backward, Detection.placeholder_loss

    def write(record):
        with log.open("a") as f:
            f.write(json.dumps(record) + "\\n")

    def recording(run, batch):
        write({"step": run.step, "used": list(batch.paths), "bad": [b.path for b in batch.bad]})
        return forward_backward(run, batch)

    def recording_placeholder(self, net, device, memory_format):
        write({"placeholder": True})
        return placeholder(self, net, device, memory_format)

    engine.forward_backward = recording
    Detection.placeholder_loss = recording_placeholder
    sys.exit(main(sys.argv[2:]))
    """
)


def _env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["maskrcnn_tiny_fpn_nl", "keypointrcnn_tiny_fpn_nl_nlhead"])
def test_two_process_torchrun_shards_the_images_and_survives_all_broken_micro_batches(tmp_path, data, model):
    # 18 images (2 broken), 1 per process: each rank takes 9 disjoint ones; a rank whose image is
    # broken takes the task's placeholder step in step with the other (no hang, no crash)
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    config = _write_config(
        tmp_path / "c.yaml",
        run,
        data["train_broken"],
        data["val_broken"],
        detection={"model": model, "oks_sigmas": [0.07] * 4},
        train={"epochs": 1, "batch_size": 1, "dist_timeout_s": 60.0},
        checkpoint={"every_iters": 0},
        eval={"every_epochs": 0, "batch_size": 1},
    )
    launcher = tmp_path / "launch.py"
    launcher.write_text(_RECORDING_LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, str(launcher), str(logs), "detect-train", "--config", str(config)],
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    out = done.stdout.decode()
    assert out.count(f"wrote {run}") == 1 and out.count("final validation") == 1, out  # rank 0 speaks
    assert "broken images skipped: 2" in out

    ranks = [[json.loads(x) for x in (logs / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    steps = [[r for r in records if "step" in r] for records in ranks]
    assert [[r["step"] for r in s] for s in steps] == [list(range(9))] * 2  # every step, on both
    used = [{p for r in s for p in r["used"]} for s in steps]
    assert not used[0] & used[1] and len(used[0]) + len(used[1]) == 16
    assert used[0] | used[1] == {str(p) for p in (data["train_broken"] / "images").glob("0*.png")}
    bad = sorted(Path(p).name for s in steps for r in s for p in r["bad"])
    assert bad == ["missing.png", "truncated.png"]
    # each empty micro-batch took the placeholder step, on its rank only
    for records, s in zip(ranks, steps, strict=True):
        assert sum("placeholder" in r for r in records) == sum(not r["used"] for r in s)
    alone = [i for i in range(9) if (not steps[0][i]["used"]) != (not steps[1][i]["used"])]
    assert alone, "no step had a micro-batch of only broken images on one rank alone"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["bad_data"]["count"] == 2
    final = summary["final_eval"]
    assert final["images"] == 5 and [Path(p).name for p in final["bad_images"]] == ["missing_val.png"]
    state = load_checkpoint(run / "checkpoints" / "iter_00000009.pt")
    assert state["progress"]["processes"] == 2 and len(state["rng_per_rank"]) == 2

    # the gathered evaluation of 2 ranks is the one-process evaluation of the same weights
    code, _, err = _eval_cli(
        "--checkpoint",
        str(run / "checkpoints" / "iter_00000009.pt"),
        "--output",
        str(tmp_path / "e"),
        "--no-progress",
    )
    assert code == 0, err[-3000:]
    stats = json.loads((tmp_path / "e" / "stats.json").read_text())
    groups = [key for key in stats if key != "images"]
    assert groups == ["bbox", "keypoints" if "keypoint" in model else "segm"]
    for iou_type in groups:
        assert _as_logged(stats, iou_type) == _logged(final, iou_type)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_multi_scale_training_resumes_exactly_also_under_bf16_autocast(tmp_path, data, amp):
    """Multi-scale training draws a size per image inside torchvision's transform (from torch's
    RNG): a run stopped after step 4 and resumed gives the uninterrupted run's weights bit for
    bit, in float32 and under bf16 autocast on the CPU (whose losses are finite)."""

    sections = {"detection": {"min_size": [40, 48, 56, 64]}, "train": {"amp": amp}}
    full, cut = tmp_path / "full", tmp_path / "cut"
    code, _, err = _train_cli(_write_config(tmp_path / "a.yaml", full, data["train"], None, **sections))
    assert code == 0, err[-3000:]
    losses = [r["loss"] for r in _records(full, "train")]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    config = _write_config(tmp_path / "b.yaml", cut, data["train"], None, **sections)
    _train_cli_stopped_after_step_4(config)
    code, _, err = _train_cli(config, "--resume")
    assert code == 0, err[-3000:]
    _assert_same_weights(cut, full)
    assert _records(cut, "train") == _records(full, "train")
