"""The benchmark scripts run (tiny cases, in-process): they must not rot. No timing asserted."""

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
