"""The detection demo's "context shapes" data: deterministic, cached, geometrically sound, COCO-valid."""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from nonlocalnet.demo import detection_data
from nonlocalnet.demo.detection_data import (
    CATEGORY_NAMES,
    FORMAT_VERSION,
    KEYPOINT_FLIP_INDEX,
    KEYPOINT_NAMES,
    ContextShapesConfig,
    context_shapes_splits,
    generate_context_shapes,
    key_position,
)
from nonlocalnet.demo.synthetic import PALETTE
from nonlocalnet.errors import InvalidTypeError, InvalidValueError, MissingFileError

mask_utils = pytest.importorskip("pycocotools.mask")
COCO = pytest.importorskip("pycocotools.coco").COCO

CLEAN = ContextShapesConfig(noise_std=0)
# pycocotools under numpy 2: "__array__ implementation doesn't accept a copy keyword"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def files(split):
    return {p.name: p.read_bytes() for p in [*split.images.iterdir(), split.annotations]}


def load(split):
    return json.loads(split.annotations.read_text())


def pixels(split, record):
    return np.asarray(Image.open(split.images / record["file_name"]))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """300 noise-free images (about 900 objects)."""
    return generate_context_shapes(tmp_path_factory.mktemp("clean"), num_images=300, seed=5, config=CLEAN)


@pytest.fixture(scope="module")
def coco(clean):
    return COCO(str(clean.annotations))


def test_same_seed_same_bytes_other_seed_or_split_differs(tmp_path):
    a = generate_context_shapes(tmp_path / "a", num_images=6, seed=1)
    b = generate_context_shapes(tmp_path / "b", num_images=6, seed=1)
    c = generate_context_shapes(tmp_path / "c", num_images=6, seed=2)
    d = generate_context_shapes(tmp_path / "d", num_images=6, seed=1, split="val")
    assert a.num_images == 6 and len(list(a.images.glob("*.png"))) == 6
    assert files(a) == files(b)
    for other in (c, d):
        assert all(files(a)[f"{i:06d}.png"] != files(other)[f"{i:06d}.png"] for i in range(1, 7))
    # the first images do not depend on how many follow
    e = generate_context_shapes(tmp_path / "e", num_images=3, seed=1)
    assert all(files(e)[f"{i:06d}.png"] == files(a)[f"{i:06d}.png"] for i in range(1, 4))


def test_cache_is_reused_regenerated_on_change_and_refused_on_error(tmp_path):
    first = generate_context_shapes(tmp_path, num_images=4, seed=0)
    stamp = first.annotations.stat().st_mtime_ns
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == FORMAT_VERSION and len(manifest["files"]) == 4
    assert generate_context_shapes(tmp_path, num_images=4, seed=0) == first
    assert first.annotations.stat().st_mtime_ns == stamp  # nothing rewritten
    other = replace(ContextShapesConfig(), num_colors=3)
    with pytest.raises(InvalidValueError, match="other arguments"):
        generate_context_shapes(tmp_path, num_images=4, seed=0, config=other, on_mismatch="error")
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest  # left as it was
    generate_context_shapes(tmp_path, num_images=3, seed=0, config=other)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:06d}.png" for i in (1, 2, 3)]
    assert load(first)["info"]["config"]["num_colors"] == 3
    # a version bump is another format: regenerated
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "version": FORMAT_VERSION + 1}))
    stamp = first.annotations.stat().st_mtime_ns
    generate_context_shapes(tmp_path, num_images=3, seed=0, config=other)
    assert first.annotations.stat().st_mtime_ns != stamp


def test_interrupted_or_damaged_generation_is_redone(tmp_path):
    split = generate_context_shapes(tmp_path, num_images=3, seed=0)
    reference = files(split)
    (tmp_path / "manifest.json").unlink()  # killed before the manifest was written
    (split.images / "000002.png").write_bytes(b"torn")
    assert files(generate_context_shapes(tmp_path, num_images=3, seed=0)) == reference
    (split.images / "000003.png").unlink()  # complete manifest, missing file
    assert files(generate_context_shapes(tmp_path, num_images=3, seed=0)) == reference


def test_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "someone-else"}')
    with pytest.raises(InvalidValueError, match="other data"):
        generate_context_shapes(tmp_path, num_images=2, seed=0)


def test_splits_are_separate_streams(tmp_path):
    splits = context_shapes_splits(tmp_path, train=3, val=2, tuning=2, seed=4)
    assert set(splits) == {"train", "val", "tuning"}
    assert [s.num_images for s in splits.values()] == [3, 2, 2]
    images = [b for s in splits.values() for name, b in files(s).items() if name.endswith(".png")]
    assert len(set(images)) == 7
    assert set(context_shapes_splits(tmp_path, train=3, val=2, seed=4)) == {"train", "val"}
    same = generate_context_shapes(tmp_path / "x", num_images=2, seed=4, split="val")
    assert files(same) == files(splits["val"])


def test_geometry_holds_over_many_images(clean):
    data = load(clean)
    config = CLEAN
    by_image = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    sizes = Counter(len(v) for v in by_image.values())
    assert set(sizes) == {2, 3, 4}
    s = config.image_size
    for img in data["images"]:
        kx, ky, kw, kh = img["key"]["bbox"]
        assert 0 <= kx and kx + kw <= s and 0 <= ky and ky + kh <= s
        key_pixels = np.stack(np.mgrid[ky : ky + kh, kx : kx + kw], -1).reshape(-1, 2)
        masks = [mask_utils.decode(rle_of(ann, s)) for ann in by_image[img["id"]]]
        for ann, mask in zip(by_image[img["id"]], masks, strict=True):
            obj = np.argwhere(mask)
            nearest = np.sqrt(((obj[:, None] - key_pixels[None]) ** 2).sum(-1)).min()
            assert nearest >= config.min_key_distance
            x, y, w, h = ann["bbox"]
            assert 0 <= x and x + w <= s and 0 <= y and y + h <= s
        total = np.sum(masks, axis=0)
        assert total.max() == 1  # no overlap
        # and a gap: no two objects' pixels touch, even diagonally
        for i, a in enumerate(masks):
            padded = np.pad(a, 1)
            grown = np.zeros_like(a)
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    grown |= padded[dy : dy + s, dx : dx + s]
            assert all(not (grown & b).any() for b in masks[i + 1 :])


def rle_of(ann, size):
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, size, size))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, size, size)
    return {"size": seg["size"], "counts": seg["counts"].encode()}


def test_categories_are_balanced_and_independent_of_the_own_colour(tmp_path):
    # small images, many of them: an image's objects of one colour share their category, so the
    # per-colour rates vary with the number of images (sd about 0.02 here), not of objects
    small = ContextShapesConfig(image_size=64, object_size=(7, 13), key_size=5, min_key_distance=28)
    data = load(generate_context_shapes(tmp_path, num_images=1000, seed=0, config=small))
    anns = data["annotations"]
    assert len(anns) >= 2500
    counts = Counter(a["category_id"] for a in anns)
    assert abs(counts[1] / len(anns) - 0.5) < 0.03
    for color in ("red", "green"):
        labels = np.array([a["category_id"] for a in anns if a["color"] == color])
        assert abs(np.mean(labels == 1) - 0.5) < 0.06, color
        assert abs(len(labels) / len(anns) - 0.5) < 0.06, color
    # per image: as balanced as the count allows
    per_image = Counter()
    for a in anns:
        per_image[a["image_id"], a["category_id"]] += 1
    for image_id in {a["image_id"] for a in anns}:
        assert abs(per_image[image_id, 1] - per_image[image_id, 2]) <= 1
    # the category is what the colours say
    keys = {img["id"]: img["key"]["color"] for img in data["images"]}
    assert all((a["color"] == keys[a["image_id"]]) == (a["category_id"] == 1) for a in anns)
    key_colors = Counter(keys.values())
    assert abs(key_colors["red"] / len(keys) - 0.5) < 0.1


def test_masks_match_the_rendered_pixels(clean, coco):
    data = load(clean)
    colors = dict(PALETTE)
    for img in data["images"][:60]:
        image = pixels(clean, img)
        painted = np.zeros(image.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            mask = coco.annToMask(ann).astype(bool)
            assert (image[mask] == colors[ann["color"]]).all()
            painted |= mask
            x, y, w, h = ann["bbox"]
            assert mask.sum() == ann["area"]
            box = np.zeros_like(mask)
            box[y : y + h, x : x + w] = True
            assert not (mask & ~box).any()
            assert mask[y].any() and mask[y + h - 1].any() and mask[:, x].any() and mask[:, x + w - 1].any()
            assert list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))) == [
                x,
                y,
                w,
                h,
            ]
        kx, ky, kw, kh = img["key"]["bbox"]
        key = np.zeros_like(painted)
        key[ky : ky + kh, kx : kx + kw] = True
        key &= (image == colors[img["key"]["color"]]).all(-1)
        assert key.sum() > 0.3 * kw * kh  # the plus sign is there
        background = ~painted & ~key
        assert (image[background] == CLEAN.background).all()


def test_coco_json_loads_and_every_segmentation_form_decodes(clean, coco):
    forms = Counter()
    for ann in coco.dataset["annotations"]:
        seg = ann["segmentation"]
        form = "polygon" if isinstance(seg, list) else "rle-" + type(seg["counts"]).__name__
        forms[form, ann["shape"]] += 1
        assert coco.annToMask(ann).sum() == ann["area"]
    assert {f for f, _ in forms} == {"polygon", "rle-str", "rle-list"}
    assert {s for f, s in forms if f == "polygon"} == {"square", "triangle"}
    assert {s for f, s in forms if f != "polygon"} == {"disc"}
    cats = coco.loadCats(coco.getCatIds())
    assert [c["name"] for c in cats] == list(CATEGORY_NAMES)
    for cat in cats:
        assert cat["keypoints"] == list(KEYPOINT_NAMES)
        assert all(1 <= i <= 4 for pair in cat["skeleton"] for i in pair)
    assert all(a["iscrowd"] == 0 for a in coco.dataset["annotations"])


def test_keypoints_lie_in_the_box_and_flip_by_name(clean):
    assert all(("left" in n) or ("right" in n) for n in KEYPOINT_NAMES)
    for i, j in enumerate(KEYPOINT_FLIP_INDEX):
        assert KEYPOINT_NAMES[j] == KEYPOINT_NAMES[i].replace("left", "L").replace("right", "left").replace(
            "L", "right"
        )
    for ann in load(clean)["annotations"]:
        kp = np.array(ann["keypoints"], dtype=float).reshape(4, 3)
        assert ann["num_keypoints"] == 4 and (kp[:, 2] == 2).all()
        x, y, w, h = ann["bbox"]
        assert (kp[:, 0] >= x).all() and (kp[:, 0] <= x + w).all()
        assert (kp[:, 1] >= y).all() and (kp[:, 1] <= y + h).all()
        left_top, right_top, left_bottom, right_bottom = kp[:, :2]
        assert left_top[0] <= right_top[0] and left_bottom[0] < right_bottom[0]
        assert left_top[1] < left_bottom[1] and right_top[1] < right_bottom[1]
        if ann["shape"] == "square":
            assert left_top.tolist() == [x, y] and right_bottom.tolist() == [x + w, y + h]


def test_key_position(clean):
    data = load(clean)
    image = data["images"][7]
    kx, ky, kw, kh = image["key"]["bbox"]
    assert key_position(clean.annotations, image["id"]) == (kx + kw / 2, ky + kh / 2)
    assert key_position(data, image["id"]) == (kx + kw / 2, ky + kh / 2)
    with pytest.raises(InvalidValueError, match="no image with id"):
        key_position(data, 10_000)
    with pytest.raises(MissingFileError):
        key_position(clean.annotations.with_name("nothing.json"), 1)


def test_more_colours_keep_the_categories_balanced(tmp_path):
    config = ContextShapesConfig(num_colors=4, noise_std=0)
    anns = load(generate_context_shapes(tmp_path, num_images=150, seed=0, config=config))["annotations"]
    assert abs(np.mean([a["category_id"] == 1 for a in anns]) - 0.5) < 0.07
    assert {a["color"] for a in anns} == {name for name, _ in PALETTE[:4]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 128.0}, "image_size must be an int"),
        ({"image_size": True}, "image_size must be an int"),
        ({"image_size": np.int64(128)}, "image_size must be an int"),
        ({"noise_std": np.float32(8)}, "noise_std"),
        ({"num_colors": 1}, "num_colors must be an int"),
        ({"num_colors": len(PALETTE) + 1}, "num_colors"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 1}, "max_objects must be an int"),
        ({"object_size": (14.0, 26)}, "object_size must be a tuple"),
        ({"object_size": (20, 14)}, "object_size"),
        ({"object_size": [14, 26]}, "object_size"),
        ({"key_size": False}, "key_size"),
        ({"min_key_distance": -1}, "min_key_distance must be a finite number"),
        ({"min_key_distance": float("nan")}, "min_key_distance"),
        ({"min_key_distance": 200}, "more than"),
        ({"noise_std": "8"}, "noise_std"),
        ({"background": 300}, "background"),
        ({"object_gap": -1}, "object_gap"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(InvalidValueError, match=message):
        ContextShapesConfig(**changes)


def test_argument_validation_and_config_round_trip(tmp_path):
    config = ContextShapesConfig(object_size=(10, 12))
    assert ContextShapesConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(InvalidTypeError):
        generate_context_shapes(tmp_path, num_images=2, seed=0, config={"image_size": 64})
    for kwargs, message in [
        ({"num_images": 0, "seed": 0}, "num_images"),
        ({"num_images": 2.0, "seed": 0}, "num_images"),
        ({"num_images": 2, "seed": -1}, "seed"),
        ({"num_images": 2, "seed": 0, "split": ""}, "split"),
        ({"num_images": 2, "seed": 0, "on_mismatch": "ignore"}, "on_mismatch"),
    ]:
        with pytest.raises(InvalidValueError, match=message):
            generate_context_shapes(tmp_path, **kwargs)


def test_an_infeasible_placement_is_reported(monkeypatch):
    monkeypatch.setattr(detection_data, "_MAX_ATTEMPTS", 3)
    config = ContextShapesConfig(image_size=64, object_size=(28, 32), key_size=8, min_key_distance=30)
    with pytest.raises(InvalidValueError, match="could not place"):
        detection_data._place(config, np.random.default_rng(0), 4)


def test_the_key_rule_gives_every_object_its_key_s_colour_as_category(tmp_path):
    """``rule="key"``: objects are drawn in the neutral colour, whatever their category, and the
    category is the key's colour (the demo's data: nothing inside a box says the category)."""
    config = replace(CLEAN, rule="key", min_objects=1, max_objects=3)
    assert config.category_names == ("red_key", "green_key")
    split = generate_context_shapes(tmp_path, num_images=80, seed=3, config=config)
    data, coco = load(split), COCO(str(split.annotations))
    assert [c["name"] for c in data["categories"]] == ["red_key", "green_key"]
    keys = {img["id"]: img["key"]["color_index"] for img in data["images"]}
    assert set(keys.values()) == {0, 1}
    for img in data["images"][:30]:
        image = pixels(split, img)
        for ann in (a for a in data["annotations"] if a["image_id"] == img["id"]):
            assert ann["category_id"] == keys[img["id"]] + 1
            assert ann["color"] == "neutral" and ann["color_index"] == -1
            mask = coco.annToMask(coco.anns[ann["id"]]).astype(bool)
            assert (image[mask] == detection_data.NEUTRAL).all()  # noise-free: exactly the fill
    # the same random draws as the match rule: the same geometry, only colours and categories differ
    match = load(
        generate_context_shapes(tmp_path / "m", num_images=80, seed=3, config=replace(config, rule="match"))
    )
    assert [a["bbox"] for a in match["annotations"]] == [a["bbox"] for a in data["annotations"]]
    with pytest.raises(InvalidValueError, match=r"rule must be one of \('match', 'key'\), got 'colour'"):
        ContextShapesConfig(rule="colour")
