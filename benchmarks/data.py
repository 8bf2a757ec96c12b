"""Benchmark clip decoding: seeking reads of one clip (read_frames) vs decoding the whole video.

Writes a realistic test video with PyAV first (H.264 via libx264 when PyAV's FFmpeg has it, else
MPEG-4 Part 2; 320x240, 30 fps, 10 s, a keyframe every 2 s; moving texture, so P/B-frames carry
real motion), then times, each case in its own process, medians over random clip starts:

- ``read_frames`` of the paper's clip: 32 frames at stride 2 (a 64-frame window);
- ``read_frames`` of 64 consecutive frames;
- ``read_all_frames`` of the whole video (the decode-everything baseline, which then slices the
  clip out of it).

The decoder runs on one thread in every case (as in DataLoader workers). On a shared machine the
best time is the steadier figure; frames decoded per clip does not depend on the load.

    python benchmarks/data.py            # about half a minute on 2 cores
    python benchmarks/data.py --quick    # seconds (smoke test)

Writes JSON (``--out``, default ``benchmarks/results/data.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _harness import machine, measure, spawn, write_json

from nonlocalnet.data import decode as _decode
from nonlocalnet.data import probe_video, read_all_frames, read_frames, train_clip_indices


def write_test_video(
    path: Path, *, width: int = 320, height: int = 240, fps: int = 30, seconds: float = 10.0, gop: int = 60
) -> dict:
    """Encode a textured, moving test video; returns its description."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.float32) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3).astype(
        np.uint8
    )
    yy, xx = np.mgrid[0:height, 0:width]
    n = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", gop
        if codec == "libx264":
            stream.options = {"crf": "23", "keyint": str(gop), "preset": "medium"}
        else:
            stream.bit_rate = 1_000_000
        for i in range(n):
            dy, dx = (i * 2) % height, (i * 3) % width  # a panning background
            img = texture[dy : dy + height, dx : dx + width].copy()
            cy, cx = height / 2 + height / 3 * np.sin(i / 20), width / 2 + width / 3 * np.cos(i / 15)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < (height / 6) ** 2] = (220, 40, 40)  # a moving ball
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    return {
        "path": str(path),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "frames": info.num_frames,
        "gop": gop,
        "bytes": path.stat().st_size,
    }


def run_case(case: dict) -> dict:
    """One measurement in this process: seconds per clip (median), frames decoded per clip."""
    path, n = case["path"], case["frames"]
    gen = torch.Generator().manual_seed(0)
    if case["method"] == "read_all_frames":
        fn = lambda: read_all_frames(path)  # noqa: E731
    else:
        info = probe_video(path)
        length, stride = case["clip_length"], case["stride"]

        def fn():
            return read_frames(path, train_clip_indices(n, length, stride, generator=gen), info=info)

    result = measure(fn, case["warmup"], case["repeats"])
    # frames the decoder output per clip, in an untimed pass over the same kind of clips
    counted = []
    frames = _decode._Reader._frames

    def counting(self):
        for f in frames(self):
            counted[-1] += 1
            yield f

    _decode._Reader._frames = counting
    try:
        gen.manual_seed(0)
        for _ in range(case["repeats"] if case["method"] == "read_frames" else 1):
            counted.append(0)
            fn()
    finally:
        _decode._Reader._frames = frames
    return {
        **case,
        **result,
        "clips_per_s": 1.0 / result["median_s"],
        "decoded_frames_per_clip": sum(counted) / len(counted),
    }


def plan(video: dict, quick: bool) -> list[dict]:
    base = {"path": video["path"], "frames": video["frames"]}
    clip = (8, 2) if quick else (32, 2)
    rep = {"warmup": 0 if quick else 1, "repeats": 2 if quick else 15}
    return [
        {**base, **rep, "method": "read_frames", "clip_length": clip[0], "stride": clip[1]},
        {**base, **rep, "method": "read_frames", "clip_length": clip[0] * 2, "stride": 1},
        {**base, "method": "read_all_frames", "warmup": 0 if quick else 1, "repeats": 1 if quick else 5},
    ]


def _label(r: dict) -> str:
    if r["method"] == "read_all_frames":
        return "read_all_frames (whole video)"
    window = r["clip_length"] * r["stride"]
    return f"read_frames {r['clip_length']} x stride {r['stride']} ({window}-frame window, random start)"


def summarise(results: list[dict], video: dict) -> tuple[str, list[dict]]:
    """Markdown table and rows: clips/s of each method and its speed-up over decoding everything."""
    base = next((r for r in results if r["method"] == "read_all_frames" and "error" not in r), None)
    table = [
        f"Video: {video['codec']} {video['width']}x{video['height']}, {video['fps']:g} fps, "
        f"{video['frames']} frames, keyframe every {video['gop']} frames, {video['bytes'] / 1e6:.2f} MB",
        "",
        "| method | ms per clip (median) | ms (best) | clips/s | frames decoded per clip "
        "| speed-up vs whole video (median) | speed-up (best) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for r in results:
        if "error" in r:
            table.append(f"| {_label(r)} | - | - | - | - | failed: {r['error']} | - |")
            continue
        speedup = base["median_s"] / r["median_s"] if base else None
        best = min(base["times_s"]) / min(r["times_s"]) if base else None
        rows.append(
            {
                "method": r["method"],
                "clip_length": r.get("clip_length"),
                "stride": r.get("stride"),
                "median_s": r["median_s"],
                "clips_per_s": r["clips_per_s"],
                "decoded_frames_per_clip": r["decoded_frames_per_clip"],
                "best_s": min(r["times_s"]),
                "speedup_vs_read_all": speedup,
                "best_speedup_vs_read_all": best,
            }
        )
        ratios = " | ".join("-" if x is None else f"{x:.2f}x" for x in (speedup, best))
        table.append(
            f"| {_label(r)} | {1e3 * r['median_s']:.1f} | {1e3 * min(r['times_s']):.1f} "
            f"| {r['clips_per_s']:.2f} | {r['decoded_frames_per_clip']:.0f} | {ratios} |"
        )
    return "\n".join(table), rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small, short video (smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="nonlocalnet-bench-"))
    try:
        size = {"width": 160, "height": 120, "seconds": 3.0, "gop": 30} if args.quick else {}
        video = write_test_video(tmp / "test.mp4", **size)
        print(f"wrote {video['codec']} test video: {video['frames']} frames", file=sys.stderr)
        results = []
        cases = plan(video, args.quick)
        for i, case in enumerate(cases, 1):
            res = spawn(__file__, case, args.timeout)
            results.append(res)
            done = res.get("error") or f"{1e3 * res['median_s']:.1f} ms, {res['clips_per_s']:.2f} clips/s"
            print(f"[{i}/{len(cases)}] {_label(case)}: {done}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table, rows = summarise(results, video)
    print(table)
    video = {k: v for k, v in video.items() if k != "path"}  # a deleted temporary file
    results = [{k: v for k, v in r.items() if k != "path"} for r in results]
    write_json(
        args.out,
        {"meta": {**machine(), "quick": args.quick}, "video": video, "summary": rows, "cases": results},
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
