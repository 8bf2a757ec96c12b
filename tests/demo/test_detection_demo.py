"""``nonlocalnet detect-demo --quick`` end to end (about 2 minutes on 2 cores): every output, the
issue's margin (the non-local model's held-out box AP >= the baseline's + 5), and the attention
study; plus the recipe's invariants, which need no training."""

import json

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from nonlocalnet.cli import main
from nonlocalnet.demo.detection_run import (
    DEMO_DATA,
    detection_demo_config,
    full_detection_recipe,
    quick_detection_recipe,
    render_detection_table,
    summarise_detection,
)
from nonlocalnet.detection.models import detector_info

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def quick_detect_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect_demo") / "out"
    code = main(["detect-demo", "--quick", "--output", str(out), "--no-progress", "--jobs", "2"])
    return code, out


def test_quick_detect_demo_writes_every_output(quick_detect_demo, capsys):
    code, out = quick_detect_demo
    assert code == 0
    for name in ("results.md", "results.json", "curves.png", "attention.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results["rows"]] == list(quick_detection_recipe().models)
    assert results["evaluated_on"] == "val" and results["jobs"] == 2
    for row in results["rows"]:
        for key in ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"):
            assert 0.0 <= row[key] <= 100.0, (key, row)
        run = out / "runs" / row["model"] / "seed0"
        assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    table = (out / "results.md").read_text()
    assert "| Mask R-CNN + 1 NL |" in table and "| AP box |" in table
    manifest = json.loads((out / "data" / "val" / "manifest.json").read_text())
    assert manifest["num_images"] == quick_detection_recipe().num_val


def test_the_quick_non_local_detector_beats_its_baseline_by_5_box_ap(quick_detect_demo):
    _, out = quick_detect_demo
    rows = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    nl, base = rows["maskrcnn_tiny_fpn_nl"], rows["maskrcnn_tiny_fpn"]
    assert nl["box_AP"] >= base["box_AP"] + 5.0, (nl, base)
    assert nl["box_AP_gain"] == pytest.approx(nl["box_AP"] - base["box_AP"])


def test_the_quick_block_attends_to_the_key_more_than_uniformly(quick_detect_demo):
    _, out = quick_detect_demo
    attention = json.loads((out / "results.json").read_text())["attention"]
    assert attention["objects"] >= 50
    assert attention["key_share"] > 2 * attention["uniform_share"], attention


def test_the_demo_recipe_differs_only_by_the_block(tmp_path):
    """Each non-local detector is its baseline plus the backbone block; the data's objects carry
    no category colour (the key decides), and every run evaluates on the held-out split."""
    full = full_detection_recipe()
    assert full.models == (
        "maskrcnn_tiny_fpn",
        "maskrcnn_tiny_fpn_nl",
        "keypointrcnn_tiny_fpn",
        "keypointrcnn_tiny_fpn_nl",
    )
    for name in full.models:
        info = detector_info(name)
        assert info.head_blocks == 0
        assert (info.backbone_block_after is not None) == name.endswith("_nl")
    assert (
        full.data == DEMO_DATA
        and DEMO_DATA.rule == "key"
        and DEMO_DATA.category_names == ("red_key", "green_key")
    )
    assert full.seeds == 3 and quick_detection_recipe().seeds == 1
    splits = {
        s: type("S", (), {"images": tmp_path / s, "annotations": tmp_path / f"{s}.json"})()
        for s in ("train", "val")
    }
    a = detection_demo_config("maskrcnn_tiny_fpn", splits, full, 0, tmp_path / "a")
    b = detection_demo_config("maskrcnn_tiny_fpn_nl", splits, full, 0, tmp_path / "b")
    assert a.detection.val_images == str(tmp_path / "val")
    assert (a.optim, a.train, a.detection.min_size, a.detection.nonlocal_norm) == (
        b.optim,
        b.train,
        b.detection.min_size,
        b.detection.nonlocal_norm,
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
