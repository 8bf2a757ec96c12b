"""Resume matrix for detection: with loader workers (0, 2, 4) and aspect-ratio grouping over
landscape and portrait images, a run killed (SIGKILL) right after a checkpoint, resumed, killed
again mid-epoch between checkpoints and resumed once more ends with the weights and metrics of
the uninterrupted run without workers, bit for bit. Workers never change the data a step sees.

Steps: 16 images, batch 2: 8 steps per epoch, 16 in all; checkpoints every 4 steps and at the
epoch's validation (4, 8, 12); the kills land after the step-4 checkpoint and after step 10."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from launch import metrics, train, train_killed_after_step, train_killed_at, weights

pytest.importorskip("torchvision")
mask_utils = pytest.importorskip("pycocotools.mask")

from PIL import Image  # noqa: E402

from nonlocalnet.demo.detection_data import ContextShapesConfig, generate_context_shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZE, TALL = 64, 80
SHAPES = ContextShapesConfig(
    image_size=SIZE, key_size=6, object_size=(10, 16), min_key_distance=20, min_objects=1, max_objects=2
)


def _make_portrait(split: Path, every: int = 3) -> int:
    """Pad every ``every``-th image of ``split`` at the bottom to ``SIZE x TALL`` (portrait), its
    masks re-encoded at the new size; returns how many became portrait."""
    path = split / "annotations.json"
    data = json.loads(path.read_text())
    tall = {im["id"] for im in data["images"][::every]}
    for im in data["images"]:
        if im["id"] in tall:
            pixels = np.asarray(Image.open(split / "images" / im["file_name"]).convert("RGB"))
            padded = np.zeros((TALL, SIZE, 3), dtype=np.uint8)
            padded[:SIZE] = pixels
            Image.fromarray(padded).save(split / "images" / im["file_name"])
            im["height"] = TALL
    for ann in data["annotations"]:
        if ann["image_id"] in tall:
            mask = np.zeros((TALL, SIZE), dtype=np.uint8)
            segm = ann["segmentation"]
            if isinstance(segm, list):  # polygons
                segm = mask_utils.merge(mask_utils.frPyObjects(segm, SIZE, SIZE))
            mask[:SIZE] = mask_utils.decode(segm)
            rle = mask_utils.encode(np.asfortranarray(mask))
            ann["segmentation"] = {"size": [TALL, SIZE], "counts": rle["counts"].decode()}
    path.write_text(json.dumps(data))
    return len(tall)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    train_split = generate_context_shapes(root / "train", num_images=16, seed=0, config=SHAPES)
    val_split = generate_context_shapes(root / "val", num_images=4, seed=0, config=SHAPES, split="val")
    assert _make_portrait(root / "train") == 6
    return {"train": train_split.images.parent, "val": val_split.images.parent}


def _config(folder: Path, shapes: dict[str, Path], workers: int) -> Path:
    detection = {
        "model": "maskrcnn_tiny_fpn_nl",
        "min_size": [SIZE],
        "max_size": TALL,
        "aspect_ratio_grouping": True,
        "model_options": {"box_score_thresh": 0.0, "box_detections_per_img": 6},
    }
    for split in ("train", "val"):
        detection[f"{split}_images"] = str(shapes[split] / "images")
        detection[f"{split}_annotations"] = str(shapes[split] / "annotations.json")
    cfg = {
        "base": str(ROOT / "configs" / "detection" / "coco.yaml"),
        "output_dir": str(folder / "run"),
        "detection": detection,
        "data": {"num_workers": workers},
        "optim": {"base_batch_size": 8, "warmup_iters": 2},
        "train": {"epochs": 2, "batch_size": 2, "log_every": 1, "progress": False},
        "checkpoint": {"every_iters": 4, "keep_last": 10},
        "eval": {"batch_size": 4},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "c.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes) -> Path:
    """The uninterrupted run without workers (a subprocess on one thread, as the others)."""
    folder = tmp_path_factory.mktemp("reference")
    train(_config(folder, shapes, 0), cmd="detect-train")
    return folder / "run"


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_killed_after_a_checkpoint_then_mid_epoch_with_workers_equals_the_uninterrupted_run(
    tmp_path, shapes, reference, workers
):
    config = _config(tmp_path, shapes, workers)
    run = tmp_path / "run"
    train_killed_at(config, run / "checkpoints" / "iter_00000004.pt", cmd="detect-train")
    train_killed_after_step(config, run, 10, "--resume", cmd="detect-train")
    assert not (run / "model.safetensors").exists()
    train(config, "--resume", cmd="detect-train")
    a, b = weights(reference), weights(run)
    assert a.keys() == b.keys()
    differ = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    assert metrics(run) == metrics(reference)
    assert [r["step"] for r in metrics(run) if r["kind"] == "val"] == [8, 16]
    shutil.rmtree(run / "checkpoints")  # large; the comparison is done
