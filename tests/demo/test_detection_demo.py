"""``nonlocalnet detect-demo --quick`` end to end (about 2 minutes on 2 cores): every output, the
issue's margin (the non-local model's held-out box AP >= the baseline's + 5), the key-swap and
attention studies; plus the recipe's invariants, which need no training."""

import json

import pytest
import torch
from png_header import png_size

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from nonlocalnet.cli import main
from nonlocalnet.demo.detection_attention import _label_of, swap_key_colour
from nonlocalnet.demo.detection_run import (
    detection_demo_config,
    render_detection_table,
    render_key_swap,
    summarise_detection,
)
from nonlocalnet.demo.recipe import detection_recipe
from nonlocalnet.engine.config import config_to_dict
from nonlocalnet.models import model_info

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def quick_detect_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect_demo") / "out"
    code = main(["detect-demo", "--quick", "--output", str(out), "--no-progress", "--jobs", "2"])
    return code, out


def test_quick_detect_demo_writes_every_output(quick_detect_demo, capsys):
    code, out = quick_detect_demo
    assert code == 0
    for name in ("results.md", "results.json"):
        assert (out / name).is_file(), name
    assert png_size(out / "curves.png") == (1100, 396)  # one figure of 10 x 3.6 in at 110 dpi
    assert png_size(out / "attention.png")[0] == 840  # image and heat map side by side, 7 in at 120 dpi
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results["rows"]] == detection_recipe("detection_quick").demo.models
    assert results["evaluated_on"] == "val" and results["jobs"] == 2
    for row in results["rows"]:
        for key in ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"):
            assert 0.0 <= row[key] <= 100.0, (key, row)
        run = out / "runs" / row["model"] / "seed0"
        assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    table = (out / "results.md").read_text()
    assert "| Mask R-CNN + 1 NL |" in table and "| AP box |" in table
    manifest = json.loads((out / "data" / "val" / "manifest.json").read_text())
    assert manifest["num_images"] == detection_recipe("detection_quick").demo.num_val


def test_the_quick_non_local_detector_beats_its_baseline_by_5_box_ap(quick_detect_demo):
    _, out = quick_detect_demo
    rows = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    nl, base = rows["maskrcnn_tiny_fpn_nl"], rows["maskrcnn_tiny_fpn"]
    assert nl["box_AP"] >= base["box_AP"] + 5.0, (nl, base)
    assert nl["box_AP_gain"] == pytest.approx(nl["box_AP"] - base["box_AP"])


def test_the_quick_non_local_detector_reads_the_key_and_its_baseline_cannot(quick_detect_demo):
    """Swapping the key's colour (nothing else in the image changes) changes the non-local
    detector's labels and leaves them right; the baseline, which cannot see the key, keeps its."""
    _, out = quick_detect_demo
    results = json.loads((out / "results.json").read_text())
    swap = results["key_swap"]
    (nl,), (base,) = swap["maskrcnn_tiny_fpn_nl"], swap["maskrcnn_tiny_fpn"]  # seed 0
    for study in (nl, base):
        assert study["found"] >= 0.8 * study["objects"] >= 50, study
    assert nl["changed"] >= 0.75 and nl["right"] >= 0.75 and nl["right_swapped"] >= 0.75, nl
    assert base["changed"] <= 0.1, base
    assert results["attention"]["objects"] == nl["objects"]
    assert "The key's colour swapped" in (out / "results.md").read_text()


def test_swap_key_colour_exchanges_red_and_green_inside_the_key_box_only():
    image = torch.rand(3, 32, 40)
    image[:, 4:12, 6:16] = torch.tensor([0.9, 0.1, 0.2])[:, None, None]  # a red key
    swapped = swap_key_colour(image, [6, 4, 10, 8])
    assert torch.equal(swapped[:, 4:12, 6:16], image[[1, 0, 2], 4:12, 6:16])
    outside = torch.ones(32, 40, dtype=torch.bool)
    outside[4:12, 6:16] = False
    assert torch.equal(swapped[:, outside], image[:, outside])
    assert torch.equal(swap_key_colour(swapped, [6, 4, 10, 8]), image)


def test_swap_key_colour_takes_every_pixel_a_float_box_touches_and_clips_at_the_border():
    image = torch.rand(3, 20, 20)
    swapped = swap_key_colour(image, [-2.5, 14.4, 6.2, 9.0])  # x -2.5..3.7, y 14.4..23.4
    assert torch.equal(swapped[:, 14:20, 0:4], image[[1, 0, 2], 14:20, 0:4])
    assert torch.equal(swapped[:, :14], image[:, :14]) and torch.equal(swapped[:, :, 4:], image[:, :, 4:])


def test_label_of_takes_the_best_overlapping_detection_or_none():
    box = torch.tensor([10.0, 10.0, 20.0, 20.0])
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert _label_of(empty, box, 0.5) is None
    prediction = {
        "boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0], [11.0, 10.0, 20.0, 20.0], [40.0, 40.0, 50.0, 50.0]]),
        "labels": torch.tensor([1, 2, 1]),
        "scores": torch.tensor([0.6, 0.7, 0.99]),  # the best score overall is elsewhere
    }
    assert _label_of(prediction, box, 0.5) == 2
    assert _label_of(prediction, torch.tensor([30.0, 30.0, 35.0, 35.0]), 0.5) is None


def test_render_key_swap_lists_every_model_and_seed():
    study = {"objects": 10, "found": 10, "changed": 1.0, "right": 0.9, "right_swapped": 0.8}
    text = render_key_swap({"maskrcnn_tiny_fpn_nl": [study, {**study, "changed": 0.5}]})
    assert "Mask R-CNN + 1 NL: label changed for 100%, 50%" in text and "after 80%, 80%" in text
    assert render_key_swap({}) == ""


def test_the_quick_run_trains_as_the_full_runs_seed_0():
    """--quick leaves out models, seeds and held-out images, never training: its margin is the
    full run's seed 0 on fewer images (with fewer steps the block had not learned in time)."""
    quick, full = detection_recipe("detection_quick"), detection_recipe("detection")
    assert set(quick.demo.models) < set(full.demo.models)
    quick_data, full_data = config_to_dict(quick), config_to_dict(full)
    for key in ("models", "seeds", "num_val", "num_tuning"):
        quick_data["demo"].pop(key), full_data["demo"].pop(key)
    assert quick_data == full_data


def test_the_demo_recipe_differs_only_by_the_block(tmp_path):
    """Each non-local detector is its baseline plus the backbone block; the data's objects carry
    no category colour (the key decides), and every run evaluates on the held-out split."""
    full = detection_recipe("detection")
    assert full.demo.models == [
        "maskrcnn_tiny_fpn",
        "maskrcnn_tiny_fpn_nl",
        "keypointrcnn_tiny_fpn",
        "keypointrcnn_tiny_fpn_nl",
    ]
    for name in full.demo.models:
        info = model_info(name, "detector")
        assert info.head_blocks == 0
        assert (info.backbone_block_after is not None) == name.endswith("_nl")
    data = full.demo.context_shapes()
    assert data.rule == "key" and data.category_names == ("red_key", "green_key")
    assert full.demo.seeds == 3 and detection_recipe("detection_quick").demo.seeds == 1
    splits = {
        s: type("S", (), {"images": tmp_path / s, "annotations": tmp_path / f"{s}.json"})()
        for s in ("train", "val")
    }
    a = detection_demo_config("maskrcnn_tiny_fpn", splits, full, 0, tmp_path / "a")
    b = detection_demo_config("maskrcnn_tiny_fpn_nl", splits, full, 0, tmp_path / "b")
    assert a.detection.val_images == str(tmp_path / "val")
    assert (a.optim, a.train, a.detection.min_size, a.detection.nonlocal_options) == (
        b.optim,
        b.train,
        b.detection.min_size,
        b.detection.nonlocal_options,
    )


def test_summary_and_table_from_records():
    runs = [
        {"model": "maskrcnn_tiny_fpn", "seed": s, "seconds": 1.0, "box_AP": 40.0 + s, "mask_AP": 30.0}
        for s in range(2)
    ] + [
        {"model": "maskrcnn_tiny_fpn_nl", "seed": s, "seconds": 1.0, "box_AP": 80.0 + s, "mask_AP": 70.0}
        for s in range(2)
    ]
    rows = summarise_detection(runs)
    assert rows[1]["box_AP"] == pytest.approx(80.5) and rows[1]["box_AP_std"] == pytest.approx(0.5)
    assert rows[1]["box_AP_gain"] == pytest.approx(40.0) and rows[1]["min_seed_margin"] == pytest.approx(39.0)
    table = render_detection_table(rows)
    assert "| Mask R-CNN + 1 NL | 80.5 ± 0.5 |" in table and "+40.0" in table
