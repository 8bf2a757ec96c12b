"""``nonlocalnet demo --quick`` end to end, through the CLI, as CI runs it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nonlocalnet.cli import main
from nonlocalnet.demo import DEMO_MODELS, QUICK_MODELS, full_recipe, model_section, quick_recipe
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
    for name in ("results.md", "results.json", "runs.json", "curves.png", "attention.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    keys = [row["key"] for row in results["rows"]]
    assert keys == [m.key for m in QUICK_MODELS] and results["jobs"] == 2
    runs = json.loads((out / "runs.json").read_text())
    assert [(r["key"], r["seed"]) for r in runs] == [(m.key, 0) for m in QUICK_MODELS]
    for row in results["rows"]:
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["params"] > 0 and row["gflops"] > 0
        run = out / "runs" / row["key"] / "seed0"
        assert (run / "model.safetensors").is_file() and (run / "curves.png").is_file()
    table = (out / "results.md").read_text()
    assert "| C2D baseline | 0 |" in table and "held-out video top-1" in table
    data = load_synthetic_dataset(out / "data")
    assert len(data.metadata("val")) == quick_recipe().task.num_val


def test_the_quick_models_attention_finds_the_planted_early_object(quick_demo):
    _, out = quick_demo
    attention = json.loads((out / "results.json").read_text())["attention"]
    assert attention["videos"] >= 50
    assert attention["hit_rate"] > 2 * attention["chance"], attention


def test_the_quick_non_local_model_beats_the_baseline(quick_demo):
    _, out = quick_demo
    rows = {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["c2d_nl_embedded"]["accuracy_mean"] > rows["c2d"]["accuracy_mean"] + 0.15  # issue margin


def test_demo_models_differ_only_by_the_block_and_the_temporal_kernels():
    recipe = full_recipe()
    sections = {m.key: model_section(m, 2, recipe) for m in DEMO_MODELS}
    c2d = sections["c2d"]["spec"]
    for key in ("c2d_nl_gaussian", "c2d_nl_embedded", "c2d_nl_dot", "c2d_nl_concat"):
        stages = sections[key]["spec"]["stages"]
        assert [s.get("nonlocal_after", []) for s in stages] == [[], [0]] + [[]] * (len(stages) - 2)
        assert [{k: v for k, v in s.items() if k != "nonlocal_after"} for s in stages] == c2d["stages"]
    assert sections["i3d"]["spec"]["conv1_temporal"] > 1
    assert {s["temporal_a"][0] for s in sections["i3d"]["spec"]["stages"]} == {3}


def test_only_the_softmax_instantiations_scale_their_logits():
    recipe = full_recipe()
    options = {m.mode: model_section(m, 2, recipe)["spec"]["nonlocal_options"] for m in DEMO_MODELS if m.mode}
    scaled = {mode for mode, o in options.items() if o["use_scale"]}
    assert recipe.scale and scaled == {"gaussian", "embedded_gaussian"}
    plain = model_section(DEMO_MODELS[2], 2, replace(recipe, scale=False))
    assert plain["spec"]["nonlocal_options"]["use_scale"] is False


def test_the_ablations_change_one_setting_of_the_demos_embedded_c2d():
    from nonlocalnet.demo import ABLATIONS

    recipe = full_recipe()
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
            options = dict(spec["nonlocal_options"])
            assert options.pop("attend", "spacetime") == m.attend
            assert options == main["nonlocal_options"]
    assert [nonlocal_stages(model_section(m, 2, recipe)["spec"]) for m in ABLATIONS["stage"][1:]] == [
        [0],
        [1],
        [2],
    ]
    assert [m.num_nonlocal for m in ABLATIONS["blocks"][1:]] == [1, 2, 3]
    assert [m.attend for m in ABLATIONS["spacetime"][1:]] == ["space", "time", "spacetime"]


def test_an_ablation_runs_end_to_end_on_a_tiny_recipe(tmp_path, capsys):
    """Every model of the space-time ablation trains through the engine and lands in the table."""
    from nonlocalnet.demo import ABLATIONS, run_demo
    from nonlocalnet.demo.synthetic import LongRangeTaskConfig

    tiny = replace(
        full_recipe(),
        task=LongRangeTaskConfig(num_train=16, num_val=8),
        seeds=1,
        epochs=1,
        widths=(4, 8, 8, 8),
        stem_width=4,
        batch_size=8,
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
