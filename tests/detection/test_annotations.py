"""Unusable annotations (segmentations pycocotools would misread, instances without a mask for a
mask model) dropped and reported, box-only data, keypoint flip pairs and
``min_keypoints_per_image``: :mod:`nonlocalnet.detection.annotations`, :class:`CocoDetection`
and their wiring in the detection task and ``detect-eval``."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch
from coco_files import OKS_SIGMAS, box_mask, compressed_rle, polygon, uncompressed_rle
from pycocotools import mask as mask_utils

from nonlocalnet.detection.annotations import rle_string_counts, segmentation_problem
from nonlocalnet.detection.coco import CocoDetection, flip_indices
from nonlocalnet.detection.cocoeval import coco_evaluate
from nonlocalnet.engine.config import ConfigError
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.detection import Detection

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # torchvision's reference
NO_OBJECT = "no usable annotation (non-crowd, a box of positive size)"


def _rewrite(ann, change) -> None:
    content = json.loads(ann.read_text())
    change(content)
    ann.write_text(json.dumps(content))


def _target(ds: CocoDetection, image_id: int) -> dict[str, torch.Tensor]:
    return ds[(ds.image_ids.index(image_id), 0)].target


def _two_points(aid: int, image_id: int) -> dict:
    """An annotation whose polygon has 2 points."""
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": 7,
        "bbox": [1, 1, 9, 9],
        "segmentation": [[1, 1, 10, 10]],
    }


def _add(ann, *records: dict, first: bool = False) -> None:
    def change(c: dict) -> None:
        c["annotations"] = [*records, *c["annotations"]] if first else [*c["annotations"], *records]

    _rewrite(ann, change)


# ---- 1. RLE and polygons are checked as pycocotools reads them ----


def test_a_short_rle_is_dropped_and_cannot_shift_the_other_masks(tiny_coco, caplog):
    """Counts summing to less than h * w passed, and one decode call for the image shifted every
    later mask and left uninitialised bytes in them (values up to 255 in a 0/1 mask)."""
    images, ann = tiny_coco
    short = {"size": [48, 64], "counts": [100, 50, 200]}  # 350 of 3072 pixels
    _add(ann, _two_points(10, 1) | {"segmentation": short}, first=True)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(images, ann, train=False)
    masks = _target(ds, 1)["masks"]
    assert int(masks.max()) == 1  # no uninitialised bytes
    assert torch.equal(masks[-1], torch.from_numpy(box_mask(48, 64, [36, 10, 12, 12])))  # not shifted
    assert masks.shape == (2, 48, 64)
    assert len(ds.dropped_annotations) == 1
    dropped = ds.dropped_annotations[0]
    assert dropped[:3] == (str(ann), 10, "segmentation.counts")
    assert "sum to 350, not height * width = 48 * 64 = 3072" in dropped.reason
    assert 10 not in ds.coco.anns and 10 not in {a["id"] for a in ds.coco.dataset["annotations"]}
    assert "1 unusable annotations (or polygons of them) left out" in caplog.text
    assert "annotation 10 segmentation.counts" in caplog.text


OTHER_SIZE = compressed_rle(box_mask(10, 10, [2, 2, 4, 4])) | {"size": [40, 40]}  # 100 pixels' string
BAD_SEGMENTATIONS = [  # on image 3, 40 x 40 = 1600 pixels
    ({"size": [40, 40], "counts": [1000, 700]}, "segmentation.counts", "sum to 1700"),
    ({"size": [40, 40], "counts": [-5, 1605]}, "segmentation.counts", "non-negative whole numbers"),
    ({"size": [40, 40], "counts": [800.5, 799.5]}, "segmentation.counts", "non-negative whole numbers"),
    ({"size": [40, 40], "counts": 5}, "segmentation.counts", "a list or a string, got int"),
    (OTHER_SIZE, "segmentation.counts", "sum to 100"),
    ({"size": [40, 40], "counts": "zzzz"}, "segmentation.counts", "character 'z' is outside"),
    ({"size": [40, 40], "counts": ""}, "segmentation.counts", "sum to 0"),
    ({"size": [40, 40], "counts": "P"}, "segmentation.counts", "ends inside a number"),
    ({"size": [40, 40], "counts": "@"}, "segmentation.counts", "negative run length"),
    ({"size": [40, 40], "counts": "é"}, "segmentation.counts", "outside compressed RLE's alphabet"),
    ({"size": [1, 1], "counts": [1]}, "segmentation.size", "RLE size [1, 1] differs"),
    ({"counts": [1600]}, "segmentation", "needs 'counts' and 'size'"),
    ([[1, 1, 10, 10]], "segmentation[0]", "at least 3 points"),
    ([[1, 1, 10, 1, 10]], "segmentation[0]", "odd number of coordinates (5)"),
    ([[]], "segmentation[0]", "at least 3 points"),
    ([["a", 1, 10, 1, 10, 10]], "segmentation[0]", "a polygon is a list of numbers"),
    ("polygon", "segmentation", "got str"),
]


@pytest.mark.parametrize(("segm", "field", "reason"), BAD_SEGMENTATIONS)
@pytest.mark.parametrize("train", [False, True])
def test_an_unusable_segmentation_drops_its_instance_naming_file_id_and_field(
    tiny_coco, segm, field, reason, train
):
    images, ann = tiny_coco
    good = {"id": 92, "image_id": 3, "category_id": 3, "bbox": [20, 20, 10, 10]}
    _add(ann, _two_points(91, 3) | {"segmentation": segm}, good | {"segmentation": polygon(good["bbox"])})
    ds = CocoDetection(images, ann, train=train)
    assert [d[:3] for d in ds.dropped_annotations] == [(str(ann), 91, field)]
    assert reason in ds.dropped_annotations[0].reason
    assert sorted(ds.coco.getAnnIds(imgIds=3)) == [92]  # nor in the evaluation's ground truth
    t = _target(ds, 3)
    assert t["labels"].tolist() == [2] and t["masks"].shape == (1, 40, 40) and int(t["masks"].max()) == 1
    assert ds.data_report()["dropped_annotations"] == [
        {"annotation_id": 91, "field": field, "reason": ds.dropped_annotations[0].reason}
    ]


def test_compressed_rle_counts_are_read_as_pycocotools_writes_them():
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((7, 5), np.uint8),
        np.ones((300, 200), np.uint8),  # one run of 60000: a number of 4 characters
        box_mask(30, 20, [0, 0, 5, 7]),  # starts with the ones: a first run of 0
        (rng.random((23, 31)) < 0.5).astype(np.uint8),
        (rng.random((64, 48)) < 0.02).astype(np.uint8),
    ]
    for mask in masks:
        rle = mask_utils.encode(np.asfortranarray(mask))
        runs = rle_string_counts(rle["counts"])
        assert runs.tolist() == uncompressed_rle(mask)["counts"]
        assert runs[1::2].sum() == mask_utils.area(rle) == mask.sum()
        assert rle_string_counts(rle["counts"].decode()).tolist() == runs.tolist()
        as_json = {"size": list(mask.shape), "counts": rle["counts"].decode()}
        assert segmentation_problem(as_json, *mask.shape) is None
    # pycocotools' own conversion of an uncompressed RLE and of polygons
    unc = uncompressed_rle(box_mask(48, 64, [36, 10, 12, 12]))
    assert rle_string_counts(mask_utils.frPyObjects(unc, 48, 64)["counts"]).tolist() == unc["counts"]
    poly = mask_utils.merge(mask_utils.frPyObjects(polygon([3, 4, 20, 11]), 48, 64))
    assert rle_string_counts(poly["counts"]).sum() == 48 * 64


def test_a_degenerate_polygon_no_longer_breaks_cocoeval(tiny_coco):
    """A 2-point polygon passed the checker, trained on an all-zero mask and made COCOeval fail
    (TypeError: Argument 'bb' has incorrect type); dropped, it is out of the ground truth."""
    images, ann = tiny_coco
    _add(ann, _two_points(91, 3))
    ds = CocoDetection(images, ann, train=False)
    result = {
        "image_id": 3, "category_id": 7, "bbox": [1.0, 1.0, 9.0, 9.0], "score": 0.9,
        "segmentation": compressed_rle(box_mask(40, 40, [1, 1, 9, 9])),
    }  # fmt: skip
    stats = coco_evaluate(ds.coco, [result], ["bbox", "segm"], image_ids=[3])
    assert stats["bbox"]["AP"] == -1.0  # image 3 has no ground truth of category 7 left
    assert [d.annotation_id for d in ds.dropped_annotations] == [91]


def test_a_degenerate_polygon_part_is_left_out_and_the_instance_kept(tiny_coco):
    """As detectron2's COCO loader: an instance with a 3-point polygon and a 2-point one keeps the
    first (training and evaluation ground truth alike); the part left out is listed."""
    images, ann = tiny_coco
    record = _two_points(92, 3)
    record["segmentation"] = [[1, 1, 9, 1, 9, 9, 1, 9], [1, 1, 10, 10]]
    _add(ann, record)
    ds = CocoDetection(images, ann, train=False)
    assert ds.coco.anns[92]["segmentation"] == [[1, 1, 9, 1, 9, 9, 1, 9]]
    (d,) = ds.dropped_annotations
    assert (d.annotation_id, d.field, d.instance_kept) == (92, "segmentation[1]", True)
    assert "keeps its other polygons" in d.reason
    masks = _target(ds, 3)["masks"]
    assert int(masks[-1].sum()) == int(
        mask_utils.area(mask_utils.frPyObjects([[1, 1, 9, 1, 9, 9, 1, 9]], 40, 40))[0]
    )


# ---- 3. box-only data ----


def _no_masks(content: dict, ids: set[int] | None = None, value: object = ()) -> None:
    for a in content["annotations"]:
        if ids is None or a["id"] in ids:
            a["segmentation"] = list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("value", [(), None])  # "segmentation": [] or null
def test_box_only_segmentations_mean_no_mask(tiny_coco, value):
    images, ann = tiny_coco
    _rewrite(ann, lambda c: _no_masks(c, value=value))
    ds = CocoDetection(images, ann, train=True)
    assert not ds.masks and ds.dropped_annotations == []
    assert "masks" not in _target(ds, 1) and _target(ds, 1)["boxes"].shape == (2, 4)
    assert all("segmentation" not in a for a in ds.coco.anns.values())
    assert ds.coco.anns[12]["area"] == 144.0  # from the box
    with pytest.raises(InvalidValueError, match="masks requested but no annotation has a segmentation"):
        CocoDetection(images, ann, train=True, masks=True)


def test_with_masks_instances_without_one_are_dropped_and_counted(tiny_coco):
    images, ann = tiny_coco
    _rewrite(ann, lambda c: _no_masks(c, {12}))
    masked = CocoDetection(images, ann, train=True)  # masks: the file has segmentations
    assert masked.masks and [d[1:3] for d in masked.dropped_annotations] == [(12, "segmentation")]
    assert "no mask" in masked.dropped_annotations[0].reason and 12 not in masked.coco.anns
    assert _target(masked, 1)["labels"].tolist() == [1]
    boxes = CocoDetection(images, ann, train=True, masks=False)  # a box model keeps it
    assert boxes.dropped_annotations == [] and _target(boxes, 1)["labels"].tolist() == [1, 2]


def _task_config(root, model: str, **detection) -> object:
    images, ann = root
    det = {
        "model": model,
        "train_images": str(images),
        "train_annotations": str(ann),
        "val_images": str(images),
        "val_annotations": str(ann),
        "oks_sigmas": OKS_SIGMAS,
    }
    return config_from_dict({"task": "detection", "detection": det | detection})


@pytest.mark.parametrize("empty", [True, False])  # "segmentation": [], or no segmentation at all
def test_mask_rcnn_on_box_only_data_is_a_config_error_naming_a_box_model(tiny_coco, empty):
    ann = tiny_coco[1]
    _rewrite(ann, _no_masks if empty else lambda c: [a.pop("segmentation") for a in c["annotations"]])
    with pytest.raises(ConfigError, match="no segmentation") as err:
        Detection(_task_config(tiny_coco, "maskrcnn_r50_fpn_nl"))
    assert str(ann) in str(err.value) and "detection.model='fasterrcnn_r50_fpn_nl'" in str(err.value)
    with pytest.raises(ConfigError, match="'fasterrcnn_r50_fpn' or 'fasterrcnn_r50_fpn_nl'"):
        Detection(_task_config(tiny_coco, "maskrcnn_tiny_fpn"))
    for model in ("fasterrcnn_r50_fpn", "keypointrcnn_tiny_fpn"):
        task = Detection(_task_config(tiny_coco, model, min_keypoints_per_image=0))
        assert not task.train_set.masks and task.train_set.dropped_annotations == []


def test_the_task_writes_the_data_report_into_the_run_folder(tiny_coco, tmp_path):
    ann = tiny_coco[1]
    _rewrite(ann, lambda c: _no_masks(c, {12}))
    _add(ann, _two_points(91, 3))
    task = Detection(_task_config(tiny_coco, "maskrcnn_tiny_fpn"))
    task.write_run_files(tmp_path)
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert set(report) == {"train", "val"} and report["train"]["annotations"] == str(ann)
    for split in ("train", "val"):
        fields = [(d["annotation_id"], d["field"]) for d in report[split]["dropped_annotations"]]
        assert fields == [(12, "segmentation"), (91, "segmentation[0]")]
    assert report["train"]["skipped_images"] == {NO_OBJECT: 2}
    assert report["val"]["skipped_images"] == {}
    # a Faster R-CNN keeps the instance without a mask: the dropped polygon only
    boxes = Detection(_task_config(tiny_coco, "fasterrcnn_r50_fpn"))
    assert [d.annotation_id for d in boxes.train_set.dropped_annotations] == [91]


def test_detect_eval_prints_and_writes_the_dropped_annotations(tiny_coco, tmp_path):
    import yaml

    from nonlocalnet.cli import main
    from nonlocalnet.detection import build_detector

    images, ann = tiny_coco
    _rewrite(ann, lambda c: c.update(images=c["images"][:1], annotations=c["annotations"][:2]))  # image 1
    _add(ann, _two_points(91, 1))
    torch.save(build_detector("maskrcnn_tiny_fpn", num_classes=4).state_dict(), tmp_path / "w.pth")
    config = tmp_path / "c.yaml"
    det = {"model": "maskrcnn_tiny_fpn", "val_images": str(images), "val_annotations": str(ann)}
    det |= {"weights": str(tmp_path / "w.pth"), "min_size": [48], "max_size": 64}
    config.write_text(
        yaml.safe_dump({"task": "detection", "output_dir": str(tmp_path / "r"), "detection": det})
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["detect-eval", "--config", str(config), "--no-progress"]) == 0
    report = tmp_path / "r" / "eval" / "data_report.json"
    assert f"1 unusable annotations dropped (see {report})" in out.getvalue()
    assert json.loads(report.read_text())["dropped_annotations"][0]["annotation_id"] == 91


# ---- 4. keypoint flip pairs ----


@pytest.mark.parametrize(
    "pair",
    [
        ("left_eye", "right_eye"), ("Left Eye", "Right Eye"), ("LEFT_EYE", "RIGHT_EYE"),
        ("eye_left", "eye_right"), ("leftEye", "rightEye"), ("eyeLeft", "eyeRight"), ("l_eye", "r_eye"),
        ("eye_L", "eye_R"), ("eye_l", "eye_r"), ("eyeL", "eyeR"), ("LEye", "REye"), ("r ankle", "l ankle"),
        ("L_F_Paw", "R_F_Paw"), ("front_left_paw", "front_right_paw"), ("lefteye", "righteye"),
    ],
)  # fmt: skip
def test_flip_pairs_are_guessed_from_the_common_conventions(pair):
    assert flip_indices(["nose", *pair, "tail"]) == [0, 2, 1, 3]


@pytest.mark.parametrize(
    "names",
    [["nose", "left_only"], ["l_eye", "r-eye_x"], ["Left_eye", "right_eye"], ["eye_L", "eye_R", "eye_r"]],
)
def test_sided_names_without_a_single_partner_ask_for_a_flip_map(names):
    with pytest.raises(InvalidValueError, match="keypoint_flip_map"):
        flip_indices(names)


def test_coco_person_keypoints_and_a_skeleton_only_category(tiny_coco):
    assert flip_indices(COCO_KEYPOINTS) == COCO_FLIP
    images, ann = tiny_coco

    def change(c: dict) -> None:
        c["categories"][1]["skeleton"] = [[1, 2]]  # a skeleton but no keypoint names: not a keypoint set

    _rewrite(ann, change)
    ds = CocoDetection(images, ann, train=True)
    assert ds.keypoint_names[1:3] == ["left_eye", "right_eye"] and ds.flip_indices == [0, 2, 1, 4, 3]


def test_a_flip_map_replaces_the_name_guess(tiny_coco, caplog):
    images, ann = tiny_coco
    names = ["nose", "a", "b", "eye_l", "eye_r"]
    _rewrite(ann, lambda c: c["categories"][0].update(keypoints=names))
    with caplog.at_level(logging.INFO):
        guessed = CocoDetection(images, ann, train=True)
    assert guessed.flip_indices == [0, 1, 2, 4, 3]
    assert "eye_l<->eye_r" in caplog.text and "stay: nose, a, b" in caplog.text
    mapped = CocoDetection(images, ann, train=True, keypoint_flip_map=[["a", "b"]])
    assert mapped.flip_indices == [0, 2, 1, 3, 4]  # only the map's pairs swap
    for bad, message in (
        ([["a", "left_eye"]], r"names \['left_eye'\], not keypoints of the data"),
        ([["a", "b"], ["b", "nose"]], "each in one pair only"),
        ([["a", "a"]], "two different names"),
        ([["a"]], "expected pairs"),
    ):
        with pytest.raises(InvalidValueError, match=message):
            CocoDetection(images, ann, train=True, keypoint_flip_map=bad)


def test_an_ambiguous_keypoint_set_fails_only_where_keypoints_flip(tiny_coco):
    images, ann = tiny_coco
    _rewrite(ann, lambda c: c["categories"][0].update(keypoints=["nose", "l_eye", "eye_R", "a", "b"]))
    with pytest.raises(InvalidValueError, match=f"{ann}: keypoint names .*'l_eye'.*keypoint_flip_map"):
        CocoDetection(images, ann, train=True)
    assert CocoDetection(images, ann, train=False).flip_indices is None  # evaluation never flips
    assert CocoDetection(images, ann, train=True, keypoints=False).flip_indices is None
    fixed = CocoDetection(images, ann, train=True, keypoint_flip_map=[["l_eye", "eye_R"]])
    assert fixed.flip_indices == [0, 2, 1, 3, 4]


@pytest.mark.parametrize(
    "value", [[["a"]], [["a", "a"]], ["a", "b"], [["a", 1]]], ids=["one", "same", "flat", "number"]
)
def test_a_malformed_flip_map_setting_is_a_config_error(value):
    with pytest.raises(ConfigError, match="detection.keypoint_flip_map: expected pairs"):
        config_from_dict({"task": "detection", "detection": {"keypoint_flip_map": value}})
    pairs = [["l_eye", "r_eye"]]
    assert (
        config_from_dict(
            {"task": "detection", "detection": {"keypoint_flip_map": pairs}}
        ).detection.keypoint_flip_map
        == pairs
    )


# ---- 5. torchvision's min_keypoints_per_image ----


def test_training_drops_images_with_few_visible_keypoints(tiny_coco):
    # visible keypoints: image 1 has 4, images 4 and 6 have 5; images 2 and 7 have no person
    few = "fewer than min_keypoints_per_image=5 visible keypoints"
    ds = CocoDetection(*tiny_coco, train=True, min_keypoints_per_image=5)
    assert ds.image_ids == [2, 4, 6, 7] and ds.skipped_images[1] == few
    assert ds.data_report()["skipped_images"] == {NO_OBJECT: 2, few: 1}
    assert CocoDetection(*tiny_coco, train=True, min_keypoints_per_image=6).image_ids == [2, 7]
    assert CocoDetection(*tiny_coco, train=True).image_ids == [1, 2, 4, 6, 7]  # the library's default: 0
    # only in training, and only where keypoints are read
    assert CocoDetection(*tiny_coco, train=False, min_keypoints_per_image=6).image_ids == list(range(1, 8))
    no_keypoints = CocoDetection(*tiny_coco, train=True, keypoints=False, min_keypoints_per_image=6)
    assert no_keypoints.image_ids == [1, 2, 4, 6, 7]
    with pytest.raises(InvalidValueError, match="min_keypoints_per_image"):
        CocoDetection(*tiny_coco, train=True, min_keypoints_per_image=-1)


def test_the_task_applies_torchvisions_10_keypoints_to_keypoint_training_only(tiny_coco):
    kp = Detection(_task_config(tiny_coco, "keypointrcnn_tiny_fpn"))  # the config's default: 10
    assert kp.train_set.min_keypoints_per_image == 10 and kp.train_set.image_ids == [2, 7]
    assert kp.val_set.image_ids == [1, 2, 3, 4, 5, 6, 7]
    masks = Detection(_task_config(tiny_coco, "maskrcnn_tiny_fpn"))
    assert masks.train_set.min_keypoints_per_image == 0 and masks.train_set.image_ids == [1, 2, 4, 6, 7]
    assert not masks.train_set.keypoints  # a Mask R-CNN reads no keypoints from a keypoint file
    ann = tiny_coco[1]
    _rewrite(ann, lambda c: c.update(annotations=[a for a in c["annotations"] if a["category_id"] == 1]))
    with pytest.raises(ConfigError, match="no image of .* is left to train on .*min_keypoints_per_image"):
        Detection(_task_config(tiny_coco, "keypointrcnn_tiny_fpn"))
