"""COCO results and COCOeval: the ground truth given as detections scores AP 100; results
round-trip through JSON; empty results score 0; keypoint sigmas are checked; evaluate_detector
with a model that returns the ground truth."""

from __future__ import annotations

import json

import pytest
import torch
from coco_files import OKS_SIGMAS
from pycocotools.coco import COCO
from torch import nn

from nonlocalnet.detection.batch import DetectionSample
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.cocoeval import (
    BOX_STATS,
    KEYPOINT_STATS,
    coco_evaluate,
    to_coco_results,
    write_coco_results,
)
from nonlocalnet.detection.evaluate import detector_iou_types, evaluate_detector
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.errors import InvalidValueError

ALL = ("bbox", "segm", "keypoints")


def gt_as_results(coco: COCO) -> list[dict]:
    """Every non-crowd ground-truth object as a detection of score 1."""
    out = []
    for a in coco.anns.values():
        if a["iscrowd"]:
            continue
        rle = coco.annToRLE(a)
        counts = rle["counts"] if isinstance(rle["counts"], str) else rle["counts"].decode()
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
             "segmentation": {"size": rle["size"], "counts": counts}}  # fmt: skip
        if "keypoints" in a:
            r["keypoints"] = a["keypoints"]
        out.append(r)
    return out


def test_ground_truth_as_detections_scores_100(tiny_coco, capsys):
    ds = CocoDetection(*tiny_coco, train=False)
    stats = coco_evaluate(ds.coco, gt_as_results(ds.coco), ALL, oks_sigmas=OKS_SIGMAS)
    assert set(stats) == set(ALL)
    assert tuple(stats["bbox"]) == tuple(stats["segm"]) == BOX_STATS
    assert tuple(stats["keypoints"]) == KEYPOINT_STATS
    for iou_type in ("bbox", "segm"):
        s = stats[iou_type]
        assert s["AP"] == s["AP50"] == s["AP75"] == s["APs"] == s["AR100"] == pytest.approx(100.0), iou_type
        assert s["APm"] == s["APl"] == -1.0  # every object is small: COCOeval's -1 is kept
    assert stats["keypoints"]["AP"] == stats["keypoints"]["AR"] == pytest.approx(100.0)
    assert capsys.readouterr().out == ""  # COCOeval's printout is captured...
    assert any("Average Precision" in line for line in stats.summary_lines)  # ...and kept
    assert "keypoints:" in stats.summary_lines


def test_worse_detections_score_less(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    results = gt_as_results(ds.coco)
    for r in results:
        x, y, w, h = r["bbox"]
        r["bbox"] = [x + 0.3 * w, y, w, h]
    results[0]["category_id"] = 7
    stats = coco_evaluate(ds.coco, results, ["bbox"])
    assert stats["bbox"]["AP"] < 50 and stats["bbox"]["AP50"] < 100


def test_restricting_the_images(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    results = [r for r in gt_as_results(ds.coco) if r["image_id"] != 4]
    assert coco_evaluate(ds.coco, results, ["bbox"])["bbox"]["AP"] < 100
    assert coco_evaluate(ds.coco, results, ["bbox"], image_ids=[1, 2, 3, 5, 6, 7])["bbox"]["AP"] == 100


def test_empty_results_give_zeros(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    stats = coco_evaluate(ds.coco, [], ALL, oks_sigmas=OKS_SIGMAS)
    assert stats == {"bbox": dict.fromkeys(BOX_STATS, 0.0), "segm": dict.fromkeys(BOX_STATS, 0.0),
                     "keypoints": dict.fromkeys(KEYPOINT_STATS, 0.0)}  # fmt: skip
    # detections with boxes only: mask and keypoint AP are 0, box AP is not
    keys = ("image_id", "category_id", "bbox", "score")
    boxes_only = [{k: r[k] for k in keys} for r in gt_as_results(ds.coco)]
    stats = coco_evaluate(ds.coco, boxes_only, ALL, oks_sigmas=OKS_SIGMAS)
    assert stats["bbox"]["AP"] == 100 and stats["segm"]["AP"] == 0 and stats["keypoints"]["AP"] == 0


def test_keypoint_sigmas_are_checked(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    results = gt_as_results(ds.coco)
    with pytest.raises(InvalidValueError, match="oks_sigmas has 4 values but the ground truth has 5 keyp"):
        coco_evaluate(ds.coco, results, ["keypoints"], oks_sigmas=OKS_SIGMAS[:4])
    with pytest.raises(InvalidValueError, match="has 5 keypoints, not COCO's 17.*oks_sigmas"):
        coco_evaluate(ds.coco, results, ["keypoints"])
    with pytest.raises(InvalidValueError, match="unknown iou type 'mask'"):
        coco_evaluate(ds.coco, results, ["mask"])
    results[0]["image_id"] = 99
    with pytest.raises(InvalidValueError, match="image 99"):
        coco_evaluate(ds.coco, results, ["bbox"])


def _outputs(ds: CocoDetection) -> tuple[list[dict], list[int]]:
    """torchvision-style outputs equal to the ground truth of every image."""
    outputs = []
    for image_id in ds.image_ids:
        t = ds.target(image_id)
        kps = t["keypoints"].clone()
        kps[..., 2] = 1
        n = len(t["boxes"])
        outputs.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.linspace(1, 0.5, n),
                        "masks": t["masks"][:, None].float() * 0.9, "keypoints": kps})  # fmt: skip
    return outputs, list(ds.image_ids)


def test_to_coco_results_and_json_round_trip(tiny_coco, tmp_path):
    ds = CocoDetection(*tiny_coco, train=False)
    outputs, image_ids = _outputs(ds)
    outputs, image_ids = outputs[:5], image_ids[:5]  # nothing for the broken and the missing image
    results = to_coco_results(outputs, image_ids, ds.label_to_category)
    first = results[0]
    assert first["image_id"] == 1 and first["category_id"] == 1 and first["score"] == 1.0
    assert first["bbox"] == [8.0, 6.0, 20.0, 30.0]  # xyxy -> xywh
    assert results[1]["category_id"] == 3  # label 2 -> category 3
    assert isinstance(first["segmentation"]["counts"], str) and first["segmentation"]["size"] == [48, 64]
    assert first["keypoints"][3:6] == [15.0, 8.0, 1.0] and len(first["keypoints"]) == 15
    path = write_coco_results(tmp_path / "out" / "results.json", results)
    assert json.loads(path.read_text()) == results
    loaded = ds.coco.loadRes(str(path))
    assert len(loaded.anns) == len(results)
    stats = coco_evaluate(ds.coco, json.loads(path.read_text()), ALL, oks_sigmas=OKS_SIGMAS)
    # the broken and missing images' objects were not "detected": recall < 100
    assert 0 < stats["bbox"]["AR100"] < 100
    evaluated = [1, 2, 3, 4, 5]
    stats = coco_evaluate(ds.coco, results, ALL, oks_sigmas=OKS_SIGMAS, image_ids=evaluated)
    assert stats["bbox"]["AP"] == stats["segm"]["AP"] == stats["keypoints"]["AP"] == pytest.approx(100.0)
    # a mask threshold above the masks' 0.9 leaves empty masks
    high = to_coco_results(outputs, image_ids, ds.label_to_category, mask_threshold=0.95)
    assert coco_evaluate(ds.coco, high, ["segm"], image_ids=evaluated)["segm"]["AP"] == 0
    with pytest.raises(InvalidValueError, match=r"labels \[9\] have no COCO category"):
        to_coco_results([{**outputs[0], "labels": torch.tensor([1, 9])}], [1], ds.label_to_category)


class _Heads(nn.Module):
    def has_mask(self) -> bool:
        return True

    def has_keypoint(self) -> bool:
        return True


class GroundTruthModel(nn.Module):
    """Returns each image's ground truth (found by its size) as its detections."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.roi_heads = _Heads()
        self.weight = nn.Parameter(torch.zeros(1))
        outputs, image_ids = _outputs(ds)
        sizes = [(ds.coco.imgs[i]["height"], ds.coco.imgs[i]["width"]) for i in image_ids]
        self.by_size = dict(zip(sizes, outputs, strict=True))
        self.images = 0

    def forward(self, images, targets=None):
        assert not self.training and not torch.is_grad_enabled()
        self.images += len(images)
        return [{k: v.clone() for k, v in self.by_size[tuple(im.shape[-2:])].items()} for im in images]


def test_evaluate_detector_with_the_ground_truth(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    model = GroundTruthModel(ds)
    assert detector_iou_types(model) == ALL
    assert detector_iou_types(nn.Linear(1, 1)) == ("bbox",)
    model.train()
    ev = evaluate_detector(model, ds, device="cpu", batch_size=2, oks_sigmas=OKS_SIGMAS)
    assert model.training  # restored
    assert model.images == 5
    for iou_type in ALL:
        assert ev.stats[iou_type]["AP"] == pytest.approx(100.0), iou_type
    assert ev.images == 5
    assert sorted(b.path.rsplit("/", 1)[-1] for b in ev.bad) == ["broken.png", "missing.png"]
    assert {r["image_id"] for r in ev.results} == {1, 2, 4}
    assert ev.summary_lines
    model.eval()
    evaluate_detector(model, ds, device="cpu", iou_types=["bbox"])
    assert not model.training


class _TwoRanks(DistContext):
    """Rank ``rank`` of two, run one after the other: gather returns what each rank gave so far."""

    def __init__(self, rank: int, store: dict) -> None:
        super().__init__(rank=rank, world_size=2)
        self.store = store

    def gather_objects(self, obj):
        self.store[self.rank] = obj
        return [self.store.get(r, obj) for r in range(2)]


def test_ranks_share_the_images_and_agree(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)  # 7 images: the second rank repeats one
    single = evaluate_detector(GroundTruthModel(ds), ds, device="cpu", oks_sigmas=OKS_SIGMAS)
    store: dict = {}
    models = [GroundTruthModel(ds), GroundTruthModel(ds)]

    def run(model, rank):
        return evaluate_detector(model, ds, device="cpu", ctx=_TwoRanks(rank, store), oks_sigmas=OKS_SIGMAS)

    run(models[0], 0)
    second = run(models[1], 1)
    first = run(GroundTruthModel(ds), 0)
    assert models[0].images + models[1].images == 5 + 1  # image 1 is rank 1's padded repeat
    for ev in (first, second):
        assert ev.stats == single.stats and ev.results == single.results
        assert ev.images == single.images and ev.bad == single.bad


def test_a_category_without_any_object_neither_breaks_loading_nor_lowers_ap(tiny_coco, tmp_path):
    """An empty class (declared, never annotated) keeps its label (``num_classes`` counts it) and
    COCOeval leaves it out of the means, as for COCO: the ground truth still scores 100."""
    images, annotations = tiny_coco
    data = json.loads(annotations.read_text())
    data["categories"].insert(1, {"id": 2, "name": "unused"})
    path = tmp_path / "with_empty_class.json"
    path.write_text(json.dumps(data))
    ds = CocoDetection(images, path, train=False)
    assert ds.class_names == ["person", "unused", "ball", "box"]
    assert ds.label_to_category == {1: 1, 2: 2, 3: 3, 4: 7}
    samples = [ds[i] for i in range(len(ds))]
    labels = {int(v) for s in samples if isinstance(s, DetectionSample) for v in s.target["labels"]}
    assert 2 not in labels and labels <= {1, 3, 4}
    stats = coco_evaluate(ds.coco, gt_as_results(ds.coco), ("bbox", "segm"))
    assert stats["bbox"]["AP"] == stats["segm"]["AP"] == pytest.approx(100.0)


def test_keypoint_evaluation_on_a_file_without_keypoints_says_which_file_it_needs(tiny_coco, tmp_path):
    images, annotations = tiny_coco
    data = json.loads(annotations.read_text())
    for c in data["categories"]:
        c.pop("keypoints", None)
    for a in data["annotations"]:
        a.pop("keypoints", None)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    ds = CocoDetection(images, path, train=False)
    with pytest.raises(
        InvalidValueError, match="no category of the ground truth names keypoints.*person_keypoints"
    ):
        coco_evaluate(ds.coco, [], ("bbox", "keypoints"))
