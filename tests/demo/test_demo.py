"""``nonlocalnet demo --quick`` end to end, through the CLI, as CI runs it."""

from __future__ import annotations

import json

import pytest
from png_header import png_size

from nonlocalnet.cli import main
from nonlocalnet.demo import DEMO_MODELS, QUICK_MODELS, model_section, video_recipe
from nonlocalnet.demo.synthetic import load_synthetic_dataset


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # two training processes side by side (the default on a 2-core machine), whatever this one has
    code = main(["demo", "--quick", "--output", str(out), "--no-progress", "--jobs", "2"])
    return code, out


def test_quick_demo_writes_every_output(quick_demo, capsys):
    code, out = quick_demo
    assert code == 0
    for name in ("results.md", "results.json", "runs.json"):
        assert (out / name).is_file(), name
    assert png_size(out / "curves.png") == (1100, 396)  # one figure of 10 x 3.6 in at 110 dpi
    # one axes per frame of a clip, 1.9 x 2.4 in each, at 120 dpi
    clip_length = video_recipe("video_quick").data.clip_length
    assert png_size(out / "attention.png") == (round(1.9 * clip_length * 120), 288)
    results = json.loads((out / "results.json").read_text())
    keys = [row["key"] for row in results["rows"]]
    assert keys == [m.key for m in QUICK_MODELS] and results["jobs"] == 2
    runs = json.loads((out / "runs.json").read_text())
    assert [(r["key"], r["seed"]) for r in runs] == [(m.key, 0) for m in QUICK_MODELS]
    for row in results["rows"]:
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["params"] > 0 and row["gflops"] > 0
        run = out / "runs" / row["key"] / "seed0"
        assert (run / "model.safetensors").is_file() and png_size(run / "curves.png") == (1210, 374)
    table = (out / "results.md").read_text()
    assert "| C2D baseline | 0 |" in table and "held-out video top-1" in table
    data = load_synthetic_dataset(out / "data")
    assert len(data.metadata("val")) == video_recipe("video_quick").demo.long_range_task().num_val


def test_the_quick_models_attention_finds_the_planted_early_object(quick_demo):
    _, out = quick_demo
    attention = json.loads((out / "results.json").read_text())["attention"]
    assert attention["videos"] >= 50
    assert attention["hit_rate"] > 2 * attention["chance"], attention


def test_the_quick_non_local_models_beat_their_baselines(quick_demo):
    """The issue's margins, C2D and I3D alike: every non-local model >= its baseline + 15 points."""
    _, out = quick_demo
    rows = {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for nonlocal_key, baseline in (("c2d_nl_embedded", "c2d"), ("i3d_nl", "i3d")):
        assert rows[nonlocal_key]["accuracy_mean"] >= rows[baseline]["accuracy_mean"] + 0.15, rows


def test_demo_models_differ_only_by_the_block_and_the_temporal_kernels():
    recipe = video_recipe().demo
    sections = {m.key: model_section(m, 2, recipe) for m in DEMO_MODELS}
    c2d = sections["c2d"]["spec"]
    for key in ("c2d_nl_gaussian", "c2d_nl_embedded", "c2d_nl_dot", "c2d_nl_concat"):
        stages = sections[key]["spec"]["stages"]
        assert [s.get("nonlocal_after", []) for s in stages] == [[], [], [0], []]  # after res4
        assert [{k: v for k, v in s.items() if k != "nonlocal_after"} for s in stages] == c2d["stages"]
    i3d = sections["i3d"]["spec"]
    assert [s["temporal_a"][0] for s in i3d["stages"]] == [3, 3, 1, 1]  # res2 and res3 inflated
    assert i3d["conv1_temporal"] == recipe.i3d_conv1
    assert sections["i3d"]["temporal_padding"] == sections["i3d_nl"]["temporal_padding"] == "replicate"
    assert "temporal_padding" not in sections["c2d"]  # C2D has no temporal kernel to pad
    assert [{k: v for k, v in s.items() if k != "temporal_a"} for s in i3d["stages"]] == [
        {k: v for k, v in s.items() if k != "temporal_a"} for s in c2d["stages"]
    ]
    nl = sections["i3d_nl"]["spec"]
    assert [s.get("nonlocal_after", []) for s in nl["stages"]] == [[], [], [0], []]
    rest = ("stages", "nonlocal_options")  # the baseline has no block to configure
    assert {k: v for k, v in nl.items() if k not in rest} == {k: v for k, v in i3d.items() if k not in rest}


def test_the_v3_task_is_still_there():
    """The earlier task (``--task v3``): 4 frames at stride 4 from 16, and the I3D that spans them."""
    from nonlocalnet.demo.recipe import video_recipe_name

    v3, v4 = video_recipe(video_recipe_name("v3")), video_recipe(video_recipe_name("v4"))
    task3 = v3.demo.long_range_task()
    assert (task3.num_frames, task3.height, task3.cue_frames, task3.window) == (16, 32, 4, 4)
    assert (v3.data.clip_length, v3.data.stride) == (4, 4)
    assert (v3.demo.i3d_conv1, v3.demo.i3d_inflated) == (5, [0, 1, 2, 3])
    assert (v4.demo.long_range_task().num_frames, v4.data.clip_length, v4.data.stride) == (6, 6, 1)
    quick3 = video_recipe(video_recipe_name("v3", quick=True))
    assert quick3.demo.long_range_task().num_frames == 16 and video_recipe("video_quick").demo.seeds == 1
    with pytest.raises(ValueError, match="unknown demo task version"):
        video_recipe_name("v5")


def test_only_the_softmax_instantiations_scale_their_logits():
    recipe = video_recipe().demo
    options = {m.mode: model_section(m, 2, recipe)["spec"]["nonlocal_options"] for m in DEMO_MODELS if m.mode}
    scaled = {mode for mode, o in options.items() if o["use_scale"]}
    assert recipe.scale and scaled == {"gaussian", "embedded_gaussian"}
    plain = model_section(DEMO_MODELS[2], 2, video_recipe("video", ["demo.scale=false"]).demo)
    assert plain["spec"]["nonlocal_options"]["use_scale"] is False


def test_the_ablations_change_one_setting_of_the_demos_embedded_c2d():
    from nonlocalnet.demo import ABLATIONS

    recipe = video_recipe().demo
    main = model_section(DEMO_MODELS[2], 2, recipe)["spec"]  # C2D + NL, embedded Gaussian

    def nonlocal_stages(spec):
        return [i for i, s in enumerate(spec["stages"]) if s.get("nonlocal_after")]

    for name, models in ABLATIONS.items():
        assert models[0] == DEMO_MODELS[0], name  # every ablation has its C2D baseline
        for m in models[1:]:
            spec = model_section(m, 2, recipe)["spec"]
            assert m.mode == "embedded_gaussian" and m.num_nonlocal == len(nonlocal_stages(spec))
            same = {k: v for k, v in spec.items() if k not in ("stages", "nonlocal_options")}
            assert same == {k: v for k, v in main.items() if k not in ("stages", "nonlocal_options")}
            options, main_options = dict(spec["nonlocal_options"]), dict(main["nonlocal_options"])
            assert options.pop("attend") == m.attend and main_options.pop("attend") == "spacetime"
            assert options == main_options
    assert [nonlocal_stages(model_section(m, 2, recipe)["spec"]) for m in ABLATIONS["stage"][1:]] == [
        [0],
        [1],
        [2],
    ]
    assert [nonlocal_stages(model_section(m, 2, recipe)["spec"]) for m in ABLATIONS["blocks"][1:]] == [
        [2],
        [1, 2],
        [0, 1, 2],
    ]
    assert (
        nonlocal_stages(main)
        == [2]
        == nonlocal_stages(model_section(ABLATIONS["spacetime"][3], 2, recipe)["spec"])
    )
    assert [m.attend for m in ABLATIONS["spacetime"][1:]] == ["space", "time", "spacetime"]


def test_an_ablation_runs_end_to_end_on_a_tiny_recipe(tmp_path, capsys):
    """Every model of the space-time ablation trains through the engine and lands in the table."""
    from nonlocalnet.demo import ABLATIONS, run_demo

    tiny = video_recipe(
        "video",
        [
            "demo.generator={num_train: 16, num_val: 8}",
            "demo.seeds=1",
            "train.epochs=1",
            "demo.widths=[4, 8, 8, 8]",
            "demo.stem_width=4",
            "train.batch_size=8",
            "optim.base_batch_size=8",
        ],
    )
    result = run_demo(tmp_path / "ab", recipe=tiny, progress=False, jobs=1, ablation="spacetime")
    assert [r["key"] for r in result.rows] == [m.key for m in ABLATIONS["spacetime"]]
    again = run_demo(tmp_path / "ab", recipe=tiny, progress=False, jobs=1, ablation="spacetime")
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in result.rows]
    # a rerun in the used folder replaces its run folders: no superseded-* checkpoints pile up
    assert not list((tmp_path / "ab" / "runs").glob("*/seed0/checkpoints/superseded-*"))
    assert result.attention is None and (tmp_path / "ab" / "results.md").is_file()
    results = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert results["ablation"] == "spacetime"
    with pytest.raises(ValueError, match="unknown ablation 'depth'"):
        run_demo(tmp_path / "x", recipe=tiny, progress=False, jobs=1, ablation="depth")
    assert main(["demo", "--ablation", "stage", "--quick"]) == 2
    assert "cannot be combined with --quick" in capsys.readouterr().err


def test_every_row_is_compared_with_the_baseline_of_its_own_architecture():
    from nonlocalnet.demo.report import render_table, summarise

    runs = [
        {
            "key": k,
            "label": lab,
            "arch": arch,
            "nonlocal": n,
            "seed": s,
            "accuracy": acc + s / 100,
            "seconds": 1.0,
            "params": 1000,
            "gflops": 0.01,
        }
        for k, lab, arch, n, acc in (
            ("c2d", "C2D baseline", "c2d", 0, 0.50),
            ("c2d_nl", "C2D + NL", "c2d", 1, 0.90),
            ("i3d", "I3D baseline", "i3d", 0, 0.70),
            ("i3d_nl", "I3D + NL", "i3d", 1, 0.95),
        )
        for s in range(3)
    ]
    rows = [line.split(" | ") for line in render_table(summarise(runs)).splitlines()[2:]]
    assert [r[6] for r in rows] == ["-", "+40.0", "-", "+25.0"]  # I3D + NL against I3D, not C2D
    assert rows[3][5] == "95.0, 96.0, 97.0" and rows[3][4] == "96.0 ± 1.0"
    # rows without an architecture (results written before it was recorded): the first row
    legacy = [{k: v for k, v in r.items() if k != "arch"} for r in runs]
    rows = [line.split(" | ") for line in render_table(summarise(legacy)).splitlines()[2:]]
    assert [r[6] for r in rows] == ["-", "+40.0", "+20.0", "+45.0"]
