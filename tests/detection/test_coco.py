"""CocoDetection: targets from polygons and RLE, crowd and empty images, image modes, bad images,
broken annotation files, and the deterministic flip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from coco_files import KEYPOINT_NAMES, box_mask

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.detection.batch import DetectionBatch, DetectionSample, collate_detection
from nonlocalnet.detection.coco import CocoDetection, flip_indices
from nonlocalnet.errors import InvalidValueError, MissingFileError


def by_image(ds: CocoDetection, image_id: int, epoch: int = 0) -> DetectionSample | BadSample:
    return ds[(ds.image_ids.index(image_id), epoch)]


def test_labels_are_contiguous_in_category_id_order(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    assert ds.category_ids == [1, 3, 7]
    assert ds.class_names == ["person", "ball", "box"]
    assert ds.label_to_category == {1: 1, 2: 3, 3: 7}
    assert ds.keypoint_names == KEYPOINT_NAMES and ds.keypoints and ds.masks
    assert ds.flip_indices is None  # evaluation never flips: no pairs needed
    assert CocoDetection(*tiny_coco, train=True).flip_indices == [0, 2, 1, 4, 3]
    assert ds.image_ids == [1, 2, 3, 4, 5, 6, 7]  # evaluation keeps every image
    assert ds.aspect_groups() == [0, 1, 0, 0, 0, 0, 0]  # only image 2 (48x64) is portrait


def test_targets_from_polygon_and_rle(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    s = by_image(ds, 1)
    assert isinstance(s, DetectionSample) and s.image_id == 1 and not s.flipped
    assert s.image.shape == (3, 48, 64) and s.image.dtype == torch.float32
    assert 0 <= s.image.min() and s.image.max() <= 1
    t = s.target
    torch.testing.assert_close(t["boxes"], torch.tensor([[8.0, 6, 28, 36], [36, 10, 48, 22]]))
    assert t["labels"].tolist() == [1, 2] and t["labels"].dtype == torch.int64
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 48, 64)
    # polygon -> the box's pixels (pycocotools rasterises the polygon's boundary half-open)
    assert abs(int(t["masks"][0].sum()) - 20 * 30) <= 50
    uncompressed = torch.from_numpy(box_mask(48, 64, [36, 10, 12, 12]))
    assert torch.equal(t["masks"][1], uncompressed)
    assert t["area"][1] == 144  # filled from the RLE
    assert t["keypoints"].shape == (2, 5, 3)
    assert t["keypoints"][0, 1].tolist() == [15, 8, 2]
    assert t["keypoints"][1].abs().sum() == 0  # the ball's category has no keypoints
    assert int(t["image_id"]) == 1 and t["iscrowd"].tolist() == [0, 0]
    g = by_image(ds, 2).target  # compressed RLE; the crowd region is left out
    assert torch.equal(g["masks"][0], torch.from_numpy(box_mask(64, 48, [4, 4, 16, 20])))
    assert g["labels"].tolist() == [3]
    assert len(ds.coco.getAnnIds(imgIds=2, iscrowd=None)) == 2  # but COCOeval still sees it


@pytest.mark.parametrize("image_id", [3, 5])  # no annotations; only a crowd region
def test_empty_targets_have_the_right_shapes(tiny_coco, image_id):
    ds = CocoDetection(*tiny_coco, train=False)
    s = by_image(ds, image_id)
    h, w = s.image.shape[1:]
    t = s.target
    assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
    assert t["labels"].shape == (0,) and t["masks"].shape == (0, h, w) and t["keypoints"].shape == (0, 5, 3)


def test_training_skips_images_without_usable_annotations(tiny_coco):
    assert CocoDetection(*tiny_coco, train=True).image_ids == [1, 2, 4, 6, 7]
    assert CocoDetection(*tiny_coco, train=True, skip_empty=False).image_ids == [1, 2, 3, 4, 5, 6, 7]


def test_image_modes_become_rgb(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)
    for image_id in (1, 2, 3, 4, 5):  # RGB, L, RGBA, JPEG, P
        s = by_image(ds, image_id)
        info = ds.coco.imgs[image_id]
        assert s.image.shape == (3, info["height"], info["width"]), image_id
    gray = by_image(ds, 2).image
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_broken_and_missing_images_are_bad_samples(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=True)
    broken, missing = by_image(ds, 6), by_image(ds, 7)
    assert isinstance(broken, BadSample) and broken.path.endswith("broken.png")
    assert "truncated" in broken.reason
    assert isinstance(missing, BadSample) and "missing" in missing.reason
    assert broken.index == ds.image_ids.index(6)
    batch = collate_detection([ds[0], broken, ds[1], missing])
    assert isinstance(batch, DetectionBatch) and len(batch) == 2
    assert batch.indices == [0, 1] and batch.image_ids == [1, 2] and batch.bad == [broken, missing]


def test_an_image_of_another_size_than_the_json_is_bad(tiny_coco):
    images, ann = tiny_coco
    content = json.loads(ann.read_text())
    content["images"][0]["width"] = 65
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] != 1]
    ann.write_text(json.dumps(content))
    s = CocoDetection(images, ann, train=False)[0]
    assert isinstance(s, BadSample) and "64x48" in s.reason and "65x48" in s.reason


def test_boxes_are_clipped_and_degenerate_ones_dropped(tiny_coco):
    images, ann = tiny_coco
    content = json.loads(ann.read_text())
    extra = [
        (91, 3, [30, 30, 20, 20], [[30, 30, 39, 30, 39, 39]]),  # clipped to 40x40
        (92, 3, [5, 5, 0, 8], [[5, 5, 6, 5, 6, 13]]),  # zero width
        (93, 7, [45, 5, 4, 4], [[45, 5, 49, 5, 49, 9]]),  # outside the image
    ]
    extra = [{"id": i, "image_id": 3, "category_id": c, "bbox": b, "segmentation": s} for i, c, b, s in extra]
    content["annotations"] += extra
    ann.write_text(json.dumps(content))
    t = by_image(CocoDetection(images, ann, train=False), 3).target
    torch.testing.assert_close(t["boxes"], torch.tensor([[30.0, 30, 40, 40]]))  # 92: w=0; 93: outside
    assert t["labels"].tolist() == [2]
    assert t["masks"].shape == (1, 40, 40) and t["keypoints"].shape == (1, 5, 3)


def _rewrite(ann, change) -> None:
    content = json.loads(ann.read_text())
    change(content)
    ann.write_text(json.dumps(content))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("images"), "missing key 'images'"),
        (lambda c: c["annotations"][0].update(image_id=99), "unknown image_id 99"),
        (lambda c: c["annotations"][0].update(category_id=5), "unknown category_id 5"),
        (lambda c: c["images"][2].update(height=0), "invalid 'height' 0"),
        (lambda c: c["images"][1].update(id=1), "two images have the id 1"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), "invalid 'bbox'"),
        (lambda c: c["annotations"][0].update(keypoints=[1, 2, 2]), "keypoints must be 15 numbers"),
        (lambda c: c["annotations"][0].update(iscrowd=2), "iscrowd must be 0 or 1"),
    ],
)
def test_a_broken_annotation_file_names_the_problem(tiny_coco, change, message):
    images, ann = tiny_coco
    _rewrite(ann, change)
    with pytest.raises(InvalidValueError, match="annotations.json") as err:
        CocoDetection(images, ann, train=True)
    assert message in str(err.value)


def test_not_json_and_missing_paths(tiny_coco, tmp_path):
    images, ann = tiny_coco
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidValueError, match="bad.json: not a JSON file"):
        CocoDetection(images, bad, train=True)
    with pytest.raises(MissingFileError, match="annotation file"):
        CocoDetection(images, tmp_path / "nope.json", train=True)
    with pytest.raises(MissingFileError, match="image folder"):
        CocoDetection(tmp_path / "nope", ann, train=True)


def test_flip_indices_swap_left_and_right_by_name():
    names = ["nose", "left_eye", "right_eye", "Left_Ear", "Right_Ear", "tail", "bright"]
    assert flip_indices(names) == [0, 2, 1, 4, 3, 5, 6]  # "bright" has no side word


def test_flip_is_consistent_with_the_image(tiny_coco):
    plain = CocoDetection(*tiny_coco, train=True, flip=False)
    flipping = CocoDetection(*tiny_coco, train=True, seed=3)
    epoch = next(e for e in range(64) if flipping[(0, e)].flipped)  # image 1
    a, b = plain[(0, epoch)], flipping[(0, epoch)]
    w = a.image.shape[-1]
    assert torch.equal(b.image, a.image.flip(-1))
    assert torch.equal(b.target["masks"], a.target["masks"].flip(-1))
    boxes = a.target["boxes"]
    expected = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    torch.testing.assert_close(b.target["boxes"], expected)
    for box, mask in zip(b.target["boxes"].long().tolist(), b.target["masks"], strict=True):
        # the flipped box still holds its object's colour in the flipped image and its mask
        x1, y1, x2, y2 = box
        region = b.image[:, y1:y2, x1:x2]
        assert torch.equal(region, region[:, :1, :1].expand_as(region))
        assert mask[y1:y2, x1:x2].float().mean() > 0.9
    kp, kp_flip = a.target["keypoints"][0], b.target["keypoints"][0]
    # left_eye (15, 8, 2) becomes the right eye at x = 64 - 15; right_eye (v=1) the left one
    assert kp_flip[2].tolist() == [w - 15, 8, 2] and kp_flip[1].tolist() == [w - 21, 8, 1]
    assert kp_flip[3].tolist() == [0, 0, 0]  # from right_hand, invisible
    assert kp_flip[4].tolist() == [w - 9, 30, 2]
    assert kp[4].tolist() == [0, 0, 0]


def test_flip_is_deterministic_by_seed_epoch_and_index(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=True, seed=5)
    pattern = [[ds[(i, e)].flipped for i in range(3)] for e in range(8)]
    again = CocoDetection(*tiny_coco, train=True, seed=5)
    assert pattern == [[again[(i, e)].flipped for i in range(3)] for e in range(8)]
    flat = [f for row in pattern for f in row]
    assert any(flat) and not all(flat)
    other = CocoDetection(*tiny_coco, train=True, seed=6)
    assert [[other.flipped(i, e) for i in range(3)] for e in range(8)] != pattern
    again.set_epoch(4)
    assert again[1].flipped == pattern[4][1]
    assert not any(CocoDetection(*tiny_coco, train=False).flipped(i, e) for i in range(3) for e in range(8))
    assert np.mean([ds.flipped(i, e) for i in range(5) for e in range(40)]) == pytest.approx(0.5, abs=0.12)


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    """A 16-bit greyscale PNG (PIL mode I;16): PIL's convert("RGB") clips it to white; the data
    sets and read_image scale it by 65535. 32-bit float images are refused with the reason."""
    from PIL import Image

    from nonlocalnet.detection.coco import load_image
    from nonlocalnet.detection.trained import read_image

    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png", 64, 48)
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    torch.testing.assert_close(image[1], torch.from_numpy(ramp.astype(np.float32) / 65535))
    assert torch.equal(image[0], image[2])
    assert torch.equal(read_image(tmp_path / "g16.png"), image)
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "f.tif")
    assert "mode F" in load_image(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="mode F"):
        read_image(tmp_path / "f.tif")
