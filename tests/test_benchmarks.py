"""The benchmark scripts run (tiny cases, in-process): they must not rot. No timing asserted."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import block
import models


def test_block_benchmark_cases_and_table():
    cases = [c for c in block.plan(quick=True) if c["n"] == 64 or c["kind"] == "matmul"]
    results = []
    for case in cases:
        case = {**case, "warmup": 0, "repeats": 1}
        results.append(block.run_case(case))
    results.append({**cases[-1], "n": 128, "error": "exit code -9"})  # a failed case is reported
    table, rows = block.summarise(results)
    assert "| embedded_gaussian | 64 | fwd |" in table and "explicit" in table
    assert any(r["reference"] == "naive" and "speedup" in r for r in rows)
    assert all(r["peak_extra_mib"] >= 0 and r["median_s"] > 0 for r in results if "error" not in r)


@pytest.mark.parametrize("naive", [False, True])
def test_models_benchmark_case(naive):
    case = {
        "model": "c2d_nl5_r50",
        "frames": 8,
        "batch": 1,
        "size": 64,
        "train": True,
        "impl": "eager",
        "naive": naive,
        "warmup": 0,
        "repeats": 1,
    }
    result = models.run_case(case)
    assert result["clips_per_s"] > 0
    gflops = {("c2d_nl5_r50", 8): 2.0, ("c2d_r50", 8): 1.5}
    base = {**result, "model": "c2d_r50", "naive": False}
    table, checks = models.summarise([result, base], gflops)
    assert "c2d_nl5_r50" in table
    if not naive:
        assert checks["efficiency"][0]["gflops_ratio"] == pytest.approx(2.0 / 1.5)


def test_models_benchmark_plan_swaps_the_naive_block_into_every_nonlocal_model():
    # regression: the plan's loop variable once shadowed ``naive``, so after the first baseline
    # model no naive case was planned at all
    cases = models.plan(False, ["eager", "channels_last"], ["infer", "train"], [8, 32])
    swapped = {(c["model"], c["frames"], c["train"]) for c in cases if c["naive"]}
    nl_models = ("c2d_nl5_r50", "i3d_nl5_r50")
    assert swapped == {(m, f, t) for m in nl_models for f in (8, 32) for t in (False, True)}
    assert all(c["impl"] == "eager" and "nl" in c["model"] for c in cases if c["naive"])
    assert len(cases) == 40
    assert not any(c["naive"] for c in models.plan(False, ["eager"], ["train"], [8], naive=False))


def test_denoise_benchmark_case():
    pytest.importorskip("skimage")
    pytest.importorskip("cv2")
    import denoise
    import numpy as np

    yy, xx = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 40), indexing="ij")
    clean = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
    rows = denoise.run_case("tiny", clean, video=False, repeats=1, slow_ok=True)
    methods = {r["method"] for r in rows}
    assert {"nonlocalnet gaussian", "skimage fast", "skimage slow", "opencv", "noisy input"} <= methods
    noisy = next(r for r in rows if r["method"] == "noisy input")["psnr"]
    assert all(r["psnr"] > noisy for r in rows if r["method"] != "noisy input")


def test_data_benchmark_case(tmp_path):
    import importlib.util

    # loaded by path: "data" is too common a module name to import by name
    spec = importlib.util.spec_from_file_location(
        "bench_data", Path(__file__).parents[1] / "benchmarks" / "data.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    video = bench.write_test_video(tmp_path / "v.mp4", width=64, height=48, seconds=1.0, gop=10)
    results = [bench.run_case({**c, "warmup": 0, "repeats": 1}) for c in bench.plan(video, quick=True)]
    table, rows = bench.summarise(results, video)
    assert "read_all_frames" in table and rows[-1]["speedup_vs_read_all"] == 1.0
    assert rows[0]["decoded_frames_per_clip"] < video["frames"] == rows[-1]["decoded_frames_per_clip"]


def test_block_grid_points_table_and_fit():
    """--grid at tiny sizes: every exact algorithm and auto per point, the table, the refit."""
    points = block.grid_points(batches=(1,), ns=(64,), ms=("N/4",), cks=(8,), dtypes=("fp32", "bf16"))
    assert len(points) == 8 and {p["cv"] for p in points} == {4, 8}  # Gaussian: Cv = Ck / 2
    results = [block.run_point(p, (*block.GRID_ALGOS, "auto"), repeats=1, warmup=0) for p in points]
    results.append({**points[0], "n": 128, "error": "timed out after 900 s"})  # a failed point is listed
    for r in results[:-1]:
        assert r["auto_choice"] in block.EXACT
        assert all(v["median_s"] > 0 and v["peak_extra_mib"] >= 0 for v in r["algorithms"].values())
    table, summary = block.summarise_grid(results)
    assert summary["points"] == 8 and summary["failed"] == 1
    own = summary["own_calls_within_10_percent"]  # tiny calls: auto is called on its own at each
    assert summary["own_calls"] == 8 and f"its own calls at 8 points, within 10% at {own}," in table
    assert "| 1 | 64 | 16 | 8 | 4 | gaussian | fwd | fp32 |" in table and "failed: " in table
    big = {**points[0], "batch": 2, "n": 50176, "m": 50176}
    assert not block._naive_fits(big)  # the 8 GiB rule: reported as skipped, not run
    costs = block.fit_costs(results[:-1])
    assert all(len(c) == 4 and min(c) >= 0 for c in costs.values())
    assert "median abs. error" in block.summarise_fit(results[:-1])


def test_block_grid_skips_naive_where_its_predicted_peak_would_be_killed(monkeypatch):
    """The OOM killer took whole points (every algorithm's measurement) at B = 2, N = 50176,
    M = 12544, fp32, forward + backward: a 4.7 GiB matrix, but about 28 GiB at the peak."""
    monkeypatch.setattr(block, "_memory_bytes", lambda: 24 * 2**30)
    p = {"batch": 2, "n": 50176, "m": 12544, "ck": 128, "cv": 64, "mode": "gaussian", "backward": True}
    p["dtype"] = "fp32"
    why = "out of memory range (predicted peak {} GiB over {} GiB)".format
    assert block._naive_skip(p) == why(28.1, "16.0")
    assert block._naive_fits({**p, "backward": False})  # 14 GiB: it ran (10.1 s)
    assert block._naive_fits({**p, "dtype": "bf16"})  # 14 GiB: it ran
    assert block._naive_fits({**p, "batch": 1})  # 14 GiB: it ran, 14.1 GiB measured
    huge = {**p, "m": 50176, "dtype": "bf16", "backward": False}  # a 4.7 GiB matrix; 9.4 in float32
    assert block._naive_skip(huge) == "out of memory range (N x M matrix over 8 GiB in float32)"
    monkeypatch.setattr(block, "_memory_bytes", lambda: 12 * 2**30)  # a smaller machine: 2/3 of it
    assert block._naive_skip({**p, "batch": 1}) == why(14.1, "8.0")
    # the grid runs the others and says what it left out, and why
    small = {**p, "batch": 1, "n": 64, "m": 16, "ck": 8, "cv": 4}
    monkeypatch.setattr(block, "_naive_peak_bytes", lambda q: 2**40)
    r = block.run_point(small, block.GRID_ALGOS, repeats=1, warmup=0)
    assert r["algorithms"]["naive"] == {"skipped": why("1024.0", "8.0")}
    assert all("median_s" in r["algorithms"][a] for a in ("fused", "flash", "chunked"))
    table, summary = block.summarise_grid([r, r])
    assert summary["points"] == 2 and "| skipped (memory) |" in table
    assert "- naive: out of memory range (predicted peak 1024.0 GiB over 8.0 GiB): 2 points" in table
    assert block.summarise_grid([r])[0].endswith(" GiB): 1 point")  # not "1 points"


def test_block_grid_memory_is_the_cgroups_limit_where_lower(monkeypatch, tmp_path):
    """The naive form's rule reads this process's cgroup (and its ancestors') memory limit, v2 or
    v1, found through /proc/self/cgroup: without a cgroup namespace (a host, a Slurm job) the
    limit is in a nested cgroup, not at the hierarchy's root."""
    pages = {"SC_PHYS_PAGES": 8 * 2**18, "SC_PAGE_SIZE": 4096}  # 8 GiB
    monkeypatch.setattr(block.os, "sysconf", pages.__getitem__)
    physical = 8 * 2**30
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    (root / "job" / "step").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")  # v2 root: no limit
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "memory.max").write_text(f"{6 * 2**30}\n")  # the job's limit, one level up
    proc.write_text("0::/job/step\n")

    limit_files = block._cgroup_limit_files

    def memory(files):
        monkeypatch.setattr(block, "_cgroup_limit_files", lambda: files)
        return block._memory_bytes()

    files = limit_files(root, proc)
    assert root / "job" / "step" / "memory.max" in files and root / "job" / "memory.max" in files
    assert memory(files) == 6 * 2**30
    (root / "job" / "memory.max").write_text(f"{12 * 2**30}\n")  # a limit over the machine's memory
    assert memory(files) == physical
    # v1: the memory controller's line, its "no limit" (a huge number), and a real limit above it
    (root / "memory" / "a" / "b").mkdir(parents=True)
    (root / "memory" / "a" / "b" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "memory" / "a" / "memory.limit_in_bytes").write_text(f"{3 * 2**30}\n")
    proc.write_text("12:cpu,cpuacct:/a/b\n11:memory:/a/b\n")
    files = limit_files(root, proc)
    assert root / "memory" / "a" / "memory.limit_in_bytes" in files
    assert root / "cpu,cpuacct" not in {f.parent for f in files}
    assert memory(files) == 3 * 2**30
    assert memory([tmp_path / "missing"]) == physical  # no cgroup files: the machine's memory
    proc.write_text("\ngarbage\n11:memory:/a/b\n\n")  # blank and foreign lines are passed over
    assert memory(limit_files(root, proc)) == 3 * 2**30
    roots = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    assert limit_files(root, tmp_path / "missing") == roots  # no /proc: the roots
    p = {"batch": 1, "n": 12544, "m": 12544, "ck": 64, "cv": 64, "mode": "embedded_gaussian"}
    p |= {"backward": False, "dtype": "fp32"}  # a 0.6 GiB matrix, 1.8 GiB at the peak: fits in 2
    monkeypatch.setattr(block, "_memory_bytes", lambda: 3 * 2**30)
    assert block._naive_fits(p) and not block._naive_fits({**p, "backward": True})  # 3.5 GiB


def test_block_grid_refuses_a_second_run_on_the_same_file(tmp_path):
    """Two --grid runs on one file each rewrote it from their own copy: the last dropped the
    other's points (8 of 16 lost when tried). The second is now refused, naming the file."""
    out = tmp_path / "grid.json"
    with block.hold_write_lock(out):
        with pytest.raises(SystemExit, match=r"another run is writing .*grid\.json"):
            block.run_grid([], out, block.GRID_ALGOS, 60.0, "grid")
    data = block.run_grid([], out, block.GRID_ALGOS, 60.0, "grid")  # the first run has ended
    assert data["points"] == []


def test_block_mmcv_table_without_mmcv():
    cases = [c for c in block.mmcv_plan("") if c["case"] == "n12544" and c["mode"] == "gaussian"]
    fake = [{**c, "median_s": 2.0 if c["impl"] == "mmcv" else 1.0, "peak_extra_mib": 100.0} for c in cases]
    table, rows = block.summarise_mmcv(fake)
    assert "mmcv NonLocal3d" in table and "2.00x" in table
    assert all("speed_vs_twin" in r for r in rows)


def test_block_mmcv_paired_file_alone_and_after_the_table():
    """A file of the paired run alone (no table cases) renders only the paired table; with cases,
    the paired table follows the main one."""
    runs = {
        "ours/auto": {"median_s": 2.0, "times_s": [2.0], "peak_extra_mib": 10.0},
        "mmcv/explicit": {"median_s": 5.0, "times_s": [5.0], "peak_extra_mib": 200.0},
    }
    pairs = [{"case": "headline", "mode": "gaussian", "runs": runs}]
    alone = block.summarise_any({"kind": "mmcv", "cases": [], "pairs": pairs})
    assert alone.startswith("| case | mode | implementation | s (median)")
    assert "| headline | gaussian | ours, auto | 2.00 | 2.0 | 10 | 2.50x | 1/20.0 |" in alone
    cases = [c for c in block.mmcv_plan("") if c["case"] == "n12544" and c["mode"] == "gaussian"]
    fake = [{**c, "median_s": 1.0, "peak_extra_mib": 1.0} for c in cases]
    both = block.summarise_any({"kind": "mmcv", "cases": fake, "pairs": pairs})
    assert both.index("speed vs naive twin") < both.index("--mmcv-paired") < both.index("2.50x")


def test_block_pair_runs_blocks_in_turn_tiny():
    case = {"case": "tiny", "mode": "gaussian", "in_channels": 8, "t": 2, "h": 4, "w": 4, "mmcv_site": ""}
    r = block.run_block_pair({**case, "impls": [["ours", "auto"], ["ours", "fused"]], "repeats": 2})
    assert set(r["runs"]) == {"ours/auto", "ours/fused"}
    assert all(len(v["times_s"]) == 2 and v["median_s"] > 0 for v in r["runs"].values())


def test_block_case_runs_ours_tiny():
    case = {**block.mmcv_plan("")[0], "in_channels": 8, "t": 2, "h": 4, "w": 4, "warmup": 0, "repeats": 1}
    result = block.run_block_case(case)
    assert result["median_s"] > 0


def test_detection_benchmark_tiny(tmp_path):
    """benchmarks/detection.py end to end at a tiny size, its cases in this process."""
    pytest.importorskip("torchvision")
    import detection
    import report

    out = tmp_path / "detection.json"
    argv = ["--models", "maskrcnn_tiny_fpn_nl", "--size", "64", "96", "--repeats", "1", "--warmup", "0"]
    payload = detection.main(
        [*argv, "--out", str(out)], runner=lambda _script, case, _t: detection.run_case(case)
    )
    assert json.loads(out.read_text()) == payload
    cases, flops = payload["cases"], payload["flops"]
    assert [(c["model"], c["train"]) for c in cases] == [
        ("maskrcnn_tiny_fpn", False),
        ("maskrcnn_tiny_fpn_nl", False),
        ("maskrcnn_tiny_fpn", True),
        ("maskrcnn_tiny_fpn_nl", True),
    ]  # the baseline was added
    assert all(c["median_s"] > 0 and c["peak_extra_mib"] >= 0 for c in cases)
    assert all(c["detections"] > 0 for c in cases if not c["train"])  # score threshold 0: the mask head ran
    base, nl = flops
    assert base["blocks"] == [] and len(nl["blocks"]) == 1 and nl["blocks"][0]["calls"] == 1
    block = nl["blocks"][0]
    assert block["gmacs"] == pytest.approx(block["alone_gmacs"], rel=1e-6) and block["gmacs"] > 0
    assert 0 < nl["share_of_model"] < nl["share_of_backbone_fpn"] < 1
    assert (
        len(payload["checks"]["ratios"]) == 2
        and payload["checks"]["share"][0]["model"] == "maskrcnn_tiny_fpn_nl"
    )
    text = report.render_detection(payload)
    assert "| maskrcnn_tiny_fpn_nl | 64x96 | train |" in text and "paper's under 5%" in text


def test_floor_benchmark_case_bounds_and_table():
    """benchmarks/floor.py at a tiny size in this process, and its arithmetic on known numbers."""
    import floor

    case = {"case": "tiny", "in_channels": 8, "t": 2, "h": 4, "w": 4, "mode": "gaussian", "repeats": 1}
    r = floor.run_case(case)
    assert (r["n"], r["m"], r["ck"], r["cv"]) == (32, 8, 8, 4)
    assert set(r["median_s"]) == {"twin", "ours", "rest"} and min(r["median_s"].values()) > 0
    assert len(r["gflops_per_s"]) == 12 and min(r["gflops_per_s"].values()) > 0
    # 7 products against the explicit form's 6: S = Q K^T twice, at width Ck
    assert r["flops"]["recomputing"] - r["flops"]["explicit"] == 2.0 * 32 * 8 * 8
    fake = {**r, "median_s": {"twin": 3.0, "ours": 2.5, "rest": 1.0}, "gflops_per_s": {"x": 1.0}}
    fake["flops"] = {"recomputing": 1e9, "explicit": 0.5e9}
    b = floor.bounds(fake)
    assert b["floor_s"] == pytest.approx(2.0) and b["twin_floor_s"] == pytest.approx(1.5)
    assert b["max_speedup_over_twin"] == pytest.approx(1.5) and b["ours_over_twin"] == pytest.approx(1.2)
    table = floor.summarise([fake, {**case, "error": "timed out after 900 s"}])
    assert "| 1.20x | 1.50x | 1.25 | 2.00 |" in table and "failed: timed out" in table


def test_the_rest_of_the_block_gets_every_layers_gradient():
    """floor.py's block-without-attention must run the backward of theta, phi, g, W_z and the norm."""
    import torch
    from floor import _rest

    from nonlocalnet import NonLocalBlock

    block = NonLocalBlock(8, 4, mode="embedded_gaussian", sub_sample=True)
    x = torch.randn(1, 8, 2, 4, 4, requires_grad=True)
    from nonlocalnet.layers import nonlocal_block

    real = nonlocal_block.nonlocal_op
    _rest(block, x).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
    assert nonlocal_block.nonlocal_op is real  # the attention is back for every other call


def test_block_grid_times_auto_by_its_pick_where_calls_are_long(monkeypatch):
    """Points whose calls take seconds do not call auto again: the table says so and uses the
    picked algorithm's own column."""
    monkeypatch.setattr(block, "AUTO_OWN_CALLS_BELOW_S", 0.0)
    point = block.grid_points(batches=(1,), ns=(64,), ms=("N",), cks=(8,), modes=("gaussian",))[0]
    r = block.run_point(point, (*block.GRID_ALGOS, "auto"), repeats=1, warmup=0)
    assert "auto" not in r["algorithms"] and set(r["algorithms"]) == set(block.GRID_ALGOS)
    table, summary = block.summarise_grid([r])
    pick = r["algorithms"][r["auto_choice"]]["median_s"]
    assert f"| {1e3 * pick:.1f}* | {r['auto_choice']} |" in table
    assert "1 points with calls over 0 s: auto was not called separately" in table
    assert summary["max_auto_over_best"] == summary["max_picked_over_best"]


def test_block_grid_warms_up_the_first_point_of_every_process(monkeypatch):
    # regression: points that ran alone with warmup 0 charged the process's cold first call to
    # the first algorithm measured (fused), up to 1.7x its warm time at N = 12544
    seen = []
    monkeypatch.setattr(block, "run_point", lambda p, algos, repeats, warmup: seen.append(warmup) or p)
    block.run_group({"points": [{}, {}, {}], "algos": ["fused"], "repeats": 1, "warmup": 0})
    assert seen == [1, 0, 0]
    block.run_group({"points": [{}], "algos": ["fused"], "repeats": 3, "warmup": 2})
    assert seen[-1] == 2


def test_block_grid_rerun_retries_failed_points_and_skips_measured_ones(tmp_path, monkeypatch):
    # regression: a point that failed (timed out) was "already there" and never measured again
    points = block.grid_points(
        batches=(1,), ns=(64,), ms=("N",), cks=(8,), modes=("gaussian",), dtypes=("fp32",)
    )
    out = tmp_path / "grid.json"
    failed = {**points[0], "error": "timed out after 2 s"}
    measured = block.run_point(points[1], block.EXACT, repeats=1, warmup=0)
    out.write_text(json.dumps({"kind": "grid", "meta": {}, "points": [failed, measured]}))
    spawned = []

    def in_process(script, case, timeout):
        if "group" not in case:  # the part's matmul rate
            assert case["kind"] == "matmul"
            return {"gflops_per_s": 123.4}
        spawned.extend(block.point_key(p) for p in case["group"]["points"])
        return {"results": block.run_group(case["group"])}

    monkeypatch.setattr(block, "spawn", in_process)
    data = block.run_grid(points, out, block.EXACT, 60.0, "grid")
    assert spawned == [block.point_key(points[0])]  # the failed one only
    assert len(data["points"]) == 2 and not any("error" in p for p in data["points"])
    assert json.loads(out.read_text())["points"] == data["points"]
    # the part is stamped (parts may run on other VMs) and its point tagged; the old one is not
    assert [p.get("part") for p in data["points"]] == [None, 0]
    assert data["parts"][0]["planned"] == 1 and data["parts"][0]["matmul_gflops_per_s"] == 123.4
    text = block.summarise_any(data)
    assert "- 1 points from parts run before" in text and "points (of 1 planned)" in text
    assert "123 GFLOP/s" in text
    # nothing left to do: no new part
    assert len(block.run_grid(points, out, block.EXACT, 60.0, "grid")["parts"]) == 1


def test_projections_benchmark_runs_tiny():
    """benchmarks/projections.py: a tiny case runs both projections and renders."""
    from projections import run_case, summarise

    r = run_case({"shape": [1, 8, 2, 4, 4], "mode": "gaussian", "repeats": 1})
    assert set(r["runs"]) == {"modules", "products"} and r["runs"]["products"]["median_s"] > 0
    assert "| 1x8x2x4x4 | gaussian |" in summarise([r, {**r, "error": "timed out"}])


def test_block_grid_part_interrupted_with_its_matmul_probe_failed(tmp_path, monkeypatch):
    """A part whose matmul probe fails and which is interrupted after its first group keeps what
    it measured, and says how much of its plan that was; a rerun continues in a new part."""
    points = block.grid_points(
        batches=(1,), ns=(64,), ms=("N",), cks=(8,), modes=("gaussian",), passes=("fwd",), dtypes=("fp32",)
    )
    points = [*points, {**points[0], "batch": 2}]
    out, groups = tmp_path / "grid.json", []

    def interrupted(script, case, timeout):
        if "group" not in case:
            return {**case, "error": "timed out after 60 s"}
        groups.append(case)
        if len(groups) == 2:
            raise KeyboardInterrupt
        return {"results": block.run_group(case["group"])}

    monkeypatch.setattr(block, "spawn", interrupted)
    monkeypatch.setattr(block, "_groups", lambda pts, budget_s=60.0: [[p] for p in pts])
    with pytest.raises(KeyboardInterrupt):
        block.run_grid(points, out, block.EXACT, 60.0, "grid")
    data = json.loads(out.read_text())
    assert len(data["points"]) == 1 and data["parts"][0]["matmul_gflops_per_s"] is None
    assert "1 points (of 2 planned)" in block.summarise_parts(data) and "matmul not measured" in (
        block.summarise_parts(data)
    )

    def measured(script, case, timeout):
        return {"results": block.run_group(case["group"])} if "group" in case else {"gflops_per_s": 9.0}

    monkeypatch.setattr(block, "spawn", measured)
    data = block.run_grid(points, out, block.EXACT, 60.0, "grid")
    assert [p["part"] for p in data["points"]] == [0, 1] and data["parts"][1]["planned"] == 1
