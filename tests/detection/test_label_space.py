"""Label spaces (``detection.labels``: contiguous, category ids, auto) through the data, the
evaluation, training's task and ``detect-eval``; torchvision's 91-class COCO convention evaluated
exactly as torchvision's own model through pycocotools; ``detect-eval --checkpoint`` overrides
that reshape the evaluated model (its transform and heads) or are refused by name."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from nonlocalnet.cli import main
from nonlocalnet.detection.batch import DetectionSample
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.evaluate import evaluate_detector
from nonlocalnet.detection.labels import resolve_label_space
from nonlocalnet.engine import ConfigError
from nonlocalnet.engine.config import config_to_dict
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.detection import Detection
from nonlocalnet.tasks.detection.setup import load_trained_detector

ROOT = Path(__file__).resolve().parents[2]
# COCO's 80 category ids: 1..90 with 10 gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
            *range(72, 83), *range(84, 91)]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread_module")  # bit-exact comparisons


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# --- resolving a label space --------------------------------------------------------------


def test_auto_chooses_where_the_class_count_decides_and_says_what_to_set_where_not():
    assert len(COCO_IDS) == 80 and max(COCO_IDS) == 90
    space = resolve_label_space("auto", COCO_IDS, 91, source="FILE")
    assert (space.kind, space.num_classes, space.labels_without_category) == ("category_ids", 91, 10)
    assert (
        space.label_to_category[13] == 13
        and space.label_to_category[90] == 90
        and 12 not in space.label_to_category
    )
    assert "category_ids" in space.summary() and "FILE has 91 classes" in space.summary()
    assert "10 labels name no category" in space.summary()
    space = resolve_label_space("auto", COCO_IDS, 81)
    assert (space.kind, space.num_classes) == ("contiguous", 81)
    assert space.label_to_category[13] == 14 and space.label_to_category[80] == 90
    assert resolve_label_space("auto", COCO_IDS).num_classes == 81  # no count given: contiguous
    with pytest.raises(
        ConfigError,
        match=r"neither .* \(81, contiguous.*\(91, labels = category ids\); set detection.labels=category_i",
    ):
        resolve_label_space("auto", COCO_IDS, 95)
    with pytest.raises(ConfigError, match="has 50 classes, neither.*other categories"):
        resolve_label_space("auto", COCO_IDS, 50, source="W")
    # fine-tuning weights of another class count: not an error, the predictors are new
    assert resolve_label_space("auto", COCO_IDS, 50, strict=False).num_classes == 81
    # ids 1..K: the two spaces are one
    space = resolve_label_space("auto", [1, 2, 3], 4)
    assert space.kind == "contiguous" and space.label_to_category == {1: 1, 2: 2, 3: 3}
    assert "ids 1..3" in space.reason
    assert resolve_label_space("category_ids", [1, 2, 3]).label_to_category == {1: 1, 2: 2, 3: 3}
    # explicit spaces and their class counts
    assert resolve_label_space("category_ids", COCO_IDS).num_classes == 91
    assert resolve_label_space("category_ids", [1, 3], 91).num_classes == 91  # a subset of COCO
    with pytest.raises(ConfigError, match="largest category id of the data is 90, so at least 91"):
        resolve_label_space("category_ids", COCO_IDS, 81)
    with pytest.raises(
        ConfigError, match="81 classes with the background.*set detection.labels=category_ids"
    ):
        resolve_label_space("contiguous", COCO_IDS, 91)
    with pytest.raises(ConfigError, match="category id 0, but label 0 is the background"):
        resolve_label_space("category_ids", [0, 1])
    with pytest.raises(ConfigError, match="detection.labels: 'ids' is not one of"):
        resolve_label_space("ids", COCO_IDS)
    with pytest.raises(ConfigError, match="detection.labels: 'ids' is not one of"):
        config_from_dict({"task": "detection", "detection": {"labels": "ids"}})


def test_coco_detection_labels_are_category_ids_on_request(tiny_coco):
    contiguous = CocoDetection(*tiny_coco, train=False)
    ds = CocoDetection(*tiny_coco, train=False, labels="category_ids")
    assert contiguous.label_to_category == {1: 1, 2: 3, 3: 7}
    assert ds.label_to_category == {1: 1, 3: 3, 7: 7} and ds.labels == "category_ids"
    labels = {
        int(v) for i in range(len(ds)) if isinstance(s := ds[i], DetectionSample) for v in s.target["labels"]
    }
    assert labels == {1, 3, 7}
    ds.set_labels("contiguous")
    assert {int(v) for v in ds.target(2)["labels"]} == {3}  # category 7 is the third
    with pytest.raises(InvalidValueError, match="'ids' is not 'contiguous' or 'category_ids'"):
        ds.set_labels("ids")


class _Heads(torch.nn.Module):
    def has_mask(self) -> bool:
        return False

    def has_keypoint(self) -> bool:
        return False


class _TruthAndAStray(torch.nn.Module):
    """Each image's ground truth (labels of the dataset's space) as detections of score 1, and
    one more detection of label 5 (no category of the tiny set) with score 1."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.roi_heads = _Heads()
        self.by_size = {}
        for image_id in ds.image_ids:
            t, im = ds.target(image_id), ds.coco.imgs[image_id]
            self.by_size[(im["height"], im["width"])] = t

    def forward(self, images, targets=None):
        out = []
        for image in images:
            t = self.by_size[tuple(image.shape[-2:])]
            boxes = torch.cat([t["boxes"], torch.tensor([[1.0, 1.0, 9.0, 9.0]])])
            labels = torch.cat([t["labels"], torch.tensor([5])])
            out.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(labels))})
        return out


def test_detections_of_labels_without_a_category_are_dropped_and_counted(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False, labels="category_ids")
    ev = evaluate_detector(_TruthAndAStray(ds), ds, device="cpu")
    assert ev.dropped == {5: ev.images} and ev.images == 5  # one per readable image
    assert {r["category_id"] for r in ev.results} <= {1, 3, 7}
    assert ev.stats["bbox"]["AP"] == pytest.approx(100.0)
    # in the contiguous space a label without a category is a bug of the model: an error
    ds.set_labels("contiguous")
    with pytest.raises(InvalidValueError, match=r"labels \[5\] have no COCO category"):
        evaluate_detector(_TruthAndAStray(ds), ds, device="cpu")


# --- training's task and its checkpoint ---------------------------------------------------


def _config(tiny_coco, tmp_path: Path, **detection) -> dict:
    images, annotations = tiny_coco
    det = {
        "model": "maskrcnn_tiny_fpn_nl",
        "min_size": [64],
        "max_size": 64,
        "train_images": str(images),
        "train_annotations": str(annotations),
        "val_images": str(images),
        "val_annotations": str(annotations),
        "model_options": {"box_score_thresh": 0.0, "box_detections_per_img": 6},
    }
    return {
        "task": "detection",
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
        "data": {"num_workers": 0},
        "eval": {"batch_size": 2},
        "detection": det | detection,
    }


def _checkpoint(tiny_coco, tmp_path: Path, **detection) -> Path:
    """A checkpoint as training writes it (the task's model and extras), without the training."""
    cfg = config_from_dict(_config(tiny_coco, tmp_path, **detection))
    task = Detection(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = task.build_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg), **task.checkpoint_extras()}, path)
    return path


def test_training_with_category_id_labels(tiny_coco, tmp_path):
    cfg = config_from_dict(_config(tiny_coco, tmp_path, labels="category_ids"))
    task = Detection(cfg)
    assert task.num_classes == 8  # the largest id, 7, + 1
    samples = [task.train_set[i] for i in range(len(task.train_set))]
    assert {int(v) for s in samples if isinstance(s, DetectionSample) for v in s.target["labels"]} <= {
        1,
        3,
        7,
    }
    model, report = task.build_model()
    assert model.roi_heads.box_predictor.cls_score.out_features == 8
    assert "labels: category_ids" in report and "detection.labels=category_ids" in report
    assert (
        task.checkpoint_extras()["labels"] == "category_ids" and task.checkpoint_extras()["num_classes"] == 8
    )
    # auto: 8 classes are the ids, 4 the categories + 1; 5 neither (the check of old, for both spaces)
    assert (
        Detection(config_from_dict(_config(tiny_coco, tmp_path, num_classes=8))).label_space.kind
        == "category_ids"
    )
    assert Detection(config_from_dict(_config(tiny_coco, tmp_path))).label_space.num_classes == 4
    with pytest.raises(ConfigError, match="detection.num_classes has 5 classes, neither the 3 categories"):
        Detection(config_from_dict(_config(tiny_coco, tmp_path, num_classes=5)))
    with pytest.raises(
        ConfigError, match="3 categories, so 4 classes with the background, but detection.num_classes has 8"
    ):
        Detection(config_from_dict(_config(tiny_coco, tmp_path, num_classes=8, labels="contiguous")))


def test_a_checkpoint_keeps_its_label_space_for_evaluation(tiny_coco, tmp_path):
    ckpt = _checkpoint(tiny_coco, tmp_path, labels="category_ids")
    trained = load_trained_detector(ckpt)
    assert trained.label_space.kind == "category_ids" and trained.label_space.num_classes == 8
    assert trained.label_names == {1: "person", 3: "ball", 7: "box"}
    assert trained.label_to_category == {1: 1, 3: 3, 7: 7}
    code, out, err = _run(
        "detect-eval", "--checkpoint", str(ckpt), "--output", str(tmp_path / "e"), "--no-progress"
    )
    assert code == 0, err[-2000:]
    assert "labels: category_ids" in out and "as trained" in out
    detections = json.loads((tmp_path / "e" / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 3, 7}
    # an untrained 8-class head gives labels 2, 4, 5, 6 too: left out and counted, not an error
    dropped = re.search(r"(\d+) detections of labels without a category", out)
    assert dropped and int(dropped.group(1)) > 0, out
    # the label space is the checkpoint's: another one is refused by name
    code, _, err = _run("detect-eval", "--checkpoint", str(ckpt), "detection.labels=contiguous")
    assert code == 2 and "detection.labels=contiguous" in err and "category_ids labels" in err


# --- detect-eval --checkpoint: overrides shape the evaluated model -------------------------


def test_detect_eval_overrides_reshape_the_model_or_are_refused_by_name(tiny_coco, tmp_path):
    ckpt = _checkpoint(tiny_coco, tmp_path)
    trained = load_trained_detector(ckpt, overrides=["detection.min_size=[32]", "detection.max_size=40"])
    assert trained.model.transform.min_size == (32,) and trained.model.transform.max_size == 40
    assert trained.changes == ["detection.min_size: [64] -> [32]", "detection.max_size: 64 -> 40"]

    def evaluate(name: str, *overrides: str) -> tuple[str, list[dict]]:
        code, out, err = _run(
            "detect-eval",
            "--checkpoint",
            str(ckpt),
            "--output",
            str(tmp_path / name),
            "--no-progress",
            *overrides,
        )
        assert code == 0, err[-2000:]
        return out, json.loads((tmp_path / name / "detections.json").read_text())

    _, plain = evaluate("plain")
    out, smaller = evaluate("small", "detection.min_size=[32]", "detection.max_size=40")
    assert "override changes the model: detection.min_size: [64] -> [32]" in out
    assert [d["bbox"] for d in smaller] != [d["bbox"] for d in plain]  # another input size, other boxes
    out, fewer = evaluate(
        "fewer", "detection.model_options={box_score_thresh: 0.0, box_detections_per_img: 2}"
    )
    assert "override changes the model: detection.model_options" in out
    per_image = {i: sum(d["image_id"] == i for d in fewer) for i in {d["image_id"] for d in plain}}
    assert max(per_image.values()) == 2 < max(sum(d["image_id"] == i for d in plain) for i in per_image)

    for override, name in [
        ("detection.nonlocal_options={norm: groupnorm}", "detection.nonlocal_options"),
        ("detection.model=maskrcnn_tiny_fpn", "detection.model"),
        ("detection.num_classes=9", "detection.num_classes=9"),
    ]:
        code, _, err = _run("detect-eval", "--checkpoint", str(ckpt), override)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert name in err and "leave" in err, err


# --- torchvision's COCO convention --------------------------------------------------------

SIZE = 64
# few proposals and detections (fast); every detection kept (an untrained head scores low)
OPTIONS = {
    "box_score_thresh": 0.0,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 20,
}


def _noise_images(folder: Path) -> list[tuple[int, str, int, int]]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [(1, "a.png", 64, 48), (2, "b.png", 48, 64), (3, "c.png", 56, 56)]  # id, file, w, h
    for _, name, w, h in images:
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / name)
    return images


def _reference_results(outputs: dict[int, dict]) -> dict[str, list[dict]]:
    """torchvision's outputs as COCO results, labels taken as category ids (torchvision's
    reference ``coco_eval.py``), one list per IoU type as it does."""
    boxes, masks = [], []
    for image_id, out in outputs.items():
        for box, label, score, mask in zip(
            out["boxes"].double().tolist(),
            out["labels"].tolist(),
            out["scores"].tolist(),
            out["masks"],
            strict=True,
        ):
            x0, y0, x1, y1 = box
            item = {"image_id": image_id, "category_id": label, "score": score}
            boxes.append(item | {"bbox": [x0, y0, x1 - x0, y1 - y0]})
            rle = mask_utils.encode(np.asfortranarray((mask[0] > 0.5).numpy().astype(np.uint8)))
            masks.append(item | {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return {"bbox": boxes, "segm": masks}


def _pycocotools_ap(annotations: Path, results: dict[str, list[dict]]) -> dict[str, list[float]]:
    gt = _quiet(COCO, str(annotations))
    stats = {}
    for iou_type, found in results.items():
        evaluator = COCOeval(gt, _quiet(gt.loadRes, copy.deepcopy(found)), iou_type)  # it adds keys
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            _quiet(step)
        stats[iou_type] = [-1.0 if v < 0 else float(v) * 100 for v in evaluator.stats]
    return stats


def test_torchvision_coco_weights_give_torchvisions_own_ap(tmp_path):
    """A 91-class torchvision ``maskrcnn_resnet50_fpn`` file (random weights, labels = COCO
    category ids) evaluated by ``detect-eval --config ... detection.weights=FILE`` through
    ``maskrcnn_r50_fpn_nl`` gives exactly the AP of torchvision's own model on the same file,
    evaluated here with pycocotools alone.

    Exact, not approximate: the reference is torchvision's ``MaskRCNN`` built as its COCO
    builder builds it for weights (``resnet_fpn_backbone`` with ``FrozenBatchNorm2d``, what
    ``maskrcnn_resnet50_fpn(weights=...)`` does; our detector is built the same way for a weights
    file), the ``_nl`` model's block is the identity at initialisation (``W_z`` = 0, adding an
    exact 0), both see one image per batch (a batch pads images to a common size, which moves
    the RPN's anchors) on one thread, and the boxes become xywh in float64 on both sides."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        file_model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    weights = tmp_path / "maskrcnn_random_91.pth"
    torch.save(file_model.state_dict(), weights)
    del file_model
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    reference = MaskRCNN(backbone, num_classes=91, min_size=SIZE, max_size=SIZE, **OPTIONS)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    reference.eval()

    images = _noise_images(tmp_path / "images")
    outputs = {}
    with torch.no_grad():
        for image_id, name, _, _ in images:
            pixels = (
                np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"), dtype=np.float32) / 255.0
            )
            outputs[image_id] = reference([torch.from_numpy(pixels).permute(2, 0, 1).contiguous()])[0]
    # the ground truth: per image the first two detections of a real COCO category with a mask
    # (the box shifted by 2 px: found, not perfect; the mask as detected), and one object of a
    # category nothing was detected as (missed)
    annotations, predicted = [], set()
    for image_id, out in outputs.items():
        labels, masks = out["labels"].tolist(), (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
        predicted |= set(labels)
        picked = [n for n, label in enumerate(labels) if label in COCO_IDS and masks[n].any()][:2]
        for n in picked:
            x0, y0, x1, y1 = (round(v) for v in out["boxes"][n].tolist())
            rle = mask_utils.encode(np.asfortranarray(masks[n]))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            annotations.append({
                "image_id": image_id, "category_id": labels[n], "bbox": [x0 + 2, y0, x1 - x0, y1 - y0],
                "area": float(masks[n].sum()), "segmentation": segmentation,
            })  # fmt: skip
        missed = next(c for c in reversed(COCO_IDS) if c not in labels)
        annotations.append({"image_id": image_id, "category_id": missed, "bbox": [4, 4, 20, 16],
                            "area": 320.0, "segmentation": [[4, 4, 24, 4, 24, 20, 4, 20]]})  # fmt: skip
    for n, a in enumerate(annotations, start=1):
        a |= {"id": n, "iscrowd": 0}
    gt_ids = {a["category_id"] for a in annotations}
    # the case the issue is about: ids above 80 in the ground truth, labels with no category found
    assert max(gt_ids) > 80 and predicted - set(COCO_IDS), (gt_ids, predicted)
    data = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"category {c}"} for c in COCO_IDS],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    reference_results = _reference_results(outputs)
    want = _pycocotools_ap(ann_file, reference_results)
    assert want["bbox"][0] > 0 and want["segm"][0] > 0  # something to compare

    config = ROOT / "configs" / "detection" / "maskrcnn_r50_fpn_nl.yaml"
    overrides = [
        f"detection.weights={weights}",
        f"detection.val_images={tmp_path / 'images'}",
        f"detection.val_annotations={ann_file}",
        f"detection.min_size=[{SIZE}]",
        f"detection.max_size={SIZE}",
        f"detection.model_options={json.dumps(OPTIONS)}",
        "eval.batch_size=1",
        "data.num_workers=0",
        "device=cpu",
    ]
    out_dir = tmp_path / "eval"
    code, out, err = _run(
        "detect-eval", "--config", str(config), *overrides, "--output", str(out_dir), "--no-progress"
    )
    assert code == 0, err[-3000:]
    stats = json.loads((out_dir / "stats.json").read_text())
    for iou_type in ("bbox", "segm"):
        assert list(stats[iou_type].values()) == want[iou_type], iou_type
    # the same detections, less those of the 10 ids without a category, dropped and counted
    dropped = [r for r in reference_results["bbox"] if r["category_id"] not in COCO_IDS]
    kept = [r for r in reference_results["bbox"] if r["category_id"] in COCO_IDS]
    assert json.loads((out_dir / "detections.json").read_text()) == [
        r | {"segmentation": m["segmentation"]}
        for r, m in zip(reference_results["bbox"], reference_results["segm"], strict=True)
        if r["category_id"] in COCO_IDS
    ]
    assert len(kept) and f"{len(dropped)} detections of labels without a category" in out
    assert "labels: category_ids" in out and "91 classes = the largest category id 90 + 1" in out

    # a class count other than the file's would evaluate new predictors; contiguous labels do not fit
    code, _, err = _run("detect-eval", "--config", str(config), *overrides, "detection.num_classes=81")
    assert code == 2 and "detection.num_classes is 81 but the box predictor" in err and "91 classes" in err
    code, _, err = _run("detect-eval", "--config", str(config), *overrides, "detection.labels=contiguous")
    assert code == 2 and "81 classes with the background" in err and "detection.labels=category_ids" in err


def test_the_detection_task_loads_a_checkpoint_predicts_and_evaluates(tiny_coco, tmp_path):
    """The Task members the engine's evaluate/predict use, and ``detect-eval`` as a library call."""
    from nonlocalnet.detection.predict import detections_to_json
    from nonlocalnet.detection.trained import predict_image
    from nonlocalnet.tasks.detection.evaluate import run_detection_evaluation

    ckpt = _checkpoint(tiny_coco, tmp_path, labels="category_ids")
    task = Detection(config_from_dict(_config(tiny_coco, tmp_path, labels="category_ids")))
    model, _ = task.build_model()
    assert task.load_weights(model, ckpt) == f"model weights of training checkpoint {ckpt}"
    assert task.memory_format(model, torch.device("cpu")) == torch.contiguous_format
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[3] = 20.0  # label 3, category 3 ("ball")
    image = tiny_coco[0] / task.val_set.coco.imgs[task.val_set.image_ids[0]]["file_name"]
    [found] = task.predict(model.eval(), [image], device=torch.device("cpu"))
    trained = load_trained_detector(ckpt)
    rows = detections_to_json(
        predict_image(model, image),
        label_names=trained.label_names,
        label_to_category=trained.label_to_category,
    )
    assert found == {"image": str(image), "detections": rows}
    assert rows and {(r["label"], r["category_id"]) for r in rows} == {("ball", 3)}
    report = run_detection_evaluation(checkpoint=ckpt, output_dir=tmp_path / "e", progress=False)
    assert report.label_space.kind == "category_ids" and report.output_dir == tmp_path / "e"
    assert json.loads((tmp_path / "e" / "stats.json").read_text())["images"] == report.evaluation.images
    assert report.summary().startswith("bbox") and "left out of the evaluation" in report.summary()
    with pytest.raises(ConfigError, match="a detection training checkpoint .* or a detection config"):
        run_detection_evaluation(task.cfg, checkpoint=ckpt)
