"""Benchmark clip decoding: seeking reads of one clip (read_frames) vs decoding the whole video.

Writes three realistic test videos with PyAV first (320x240, 30 fps, 10 s; a moving texture, so
P/B-frames carry real motion):

- ``h264-mp4``: H.264 in MP4 (libx264 when PyAV's FFmpeg has it, else MPEG-4 Part 2), a keyframe
  every 2 s;
- ``mpeg4-avi-long-gop``: MPEG-4 Part 2 with B-frames in AVI (the encoding of UCF-101 and
  HMDB-51), a keyframe every 250 frames;
- ``h264-mkv-vfr``: H.264 in Matroska at a variable frame rate (gaps of 20-67 ms, as a phone
  records), a keyframe every 2 s;

then times, per video and each case in its own process, medians over random clip starts:

- ``read_frames`` of the paper's clip: 32 frames at stride 2 (a 64-frame window);
- ``read_frames`` of 64 consecutive frames;
- ``read_all_frames`` of the whole video (the decode-everything baseline, which then slices the
  clip out of it).

Clips are read with the video's :class:`~nonlocalnet.data.FrameIndex` built once beforehand, as
a data set does; building it is timed separately ("index once"). The decoder runs on one thread
in every case (as in DataLoader workers). On a shared machine the best time is the steadier
figure; frames decoded per clip does not depend on the load.

    python benchmarks/data.py            # about two minutes on 2 cores
    python benchmarks/data.py --quick    # seconds (smoke test)

Writes JSON (``--out``, default ``benchmarks/results/data.json``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from _harness import machine, measure, spawn, write_json

from nonlocalnet.data import decode as _decode
from nonlocalnet.data import probe_video, read_all_frames, read_frames, train_clip_indices

VIDEOS = {
    "h264-mp4": {"codec": "libx264", "suffix": "mp4", "gop": 60},
    "mpeg4-avi-long-gop": {"codec": "mpeg4", "suffix": "avi", "gop": 250, "bframes": 2},
    "h264-mkv-vfr": {"codec": "libx264", "suffix": "mkv", "gop": 60, "vfr": True},
}


def write_test_video(
    path: Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    seconds: float = 10.0,
    gop: int = 60,
    codec: str = "libx264",
    bframes: int | None = None,
    vfr: bool = False,
) -> dict:
    """Encode a textured, moving test video; returns its description."""
    import av

    if codec not in av.codecs_available:
        codec = "mpeg4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.float32) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3).astype(
        np.uint8
    )
    yy, xx = np.mgrid[0:height, 0:width]
    n = round(seconds * fps)
    gaps = [20, 33, 41, 67, 25, 30]  # ms, mean 36: a phone's variable rate
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", gop
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"crf": "23", "keyint": str(gop), "preset": "medium"}
        else:
            stream.bit_rate = 1_000_000
            # no scene-cut keyframes: the moving random texture would make every anchor an I-frame
            stream.options = {"sc_threshold": "1000000000"}
            if bframes:
                stream.codec_context.max_b_frames = bframes
        pts = 0
        for i in range(n):
            dy, dx = (i * 2) % height, (i * 3) % width  # a panning background
            img = texture[dy : dy + height, dx : dx + width].copy()
            cy, cx = height / 2 + height / 3 * np.sin(i / 20), width / 2 + width / 3 * np.cos(i / 15)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < (height / 6) ** 2] = (220, 40, 40)  # a moving ball
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += gaps[i % len(gaps)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    header = probe_video(path)
    start = time.perf_counter()
    info = probe_video(path, exact=True)
    index_s = time.perf_counter() - start
    return {
        "path": str(path),
        "codec": info.codec,
        "container": path.suffix[1:],
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "vfr": vfr,
        "frames": info.num_frames,
        "header_frames": header.num_frames,
        "seekable": info.index.seekable,
        "keyframes": len(info.index.keyframes),
        "index_s": index_s,
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
        info = probe_video(path, exact=True)  # the index, once, as a data set keeps it
        length, stride = case["clip_length"], case["stride"]

        def fn():
            return read_frames(path, train_clip_indices(n, length, stride, generator=gen), info=info)

    result = measure(fn, case["warmup"], case["repeats"])
    # frames the decoder output per clip, in an untimed pass over the same kind of clips
    counted = []
    frames = _decode.VideoReader._frames

    def counting(self):
        for f in frames(self):
            counted[-1] += 1
            yield f

    _decode.VideoReader._frames = counting
    try:
        gen.manual_seed(0)
        for _ in range(case["repeats"] if case["method"] == "read_frames" else 1):
            counted.append(0)
            fn()
    finally:
        _decode.VideoReader._frames = frames
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
    rate = "variable rate, mean " if video.get("vfr") else ""
    table = [
        f"Video: {video['codec']} in {video.get('container', 'mp4')}, {video['width']}x{video['height']}, "
        f"{rate}{video['fps']:.3g} fps, {video['frames']} frames (header: {video.get('header_frames')}), "
        f"keyframe every {video['gop']} frames ({video.get('keyframes', '?')} keyframes), "
        f"{video['bytes'] / 1e6:.2f} MB; index built once in "
        f"{1e3 * video.get('index_s', 0):.0f} ms, "
        + ("seeking" if video.get("seekable", True) else "timestamps unusable: reads count from the start"),
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
    out: dict = {"meta": {**machine(), "quick": args.quick}, "videos": []}
    tables = []
    try:
        size = {"width": 160, "height": 120, "seconds": 3.0} if args.quick else {}
        for name, spec in VIDEOS.items():
            spec = dict(spec)
            suffix = spec.pop("suffix")
            if args.quick:
                spec["gop"] = min(spec["gop"], 30)
            video = write_test_video(tmp / f"{name}.{suffix}", **size, **spec)
            print(f"wrote {name}: {video['frames']} frames", file=sys.stderr)
            results = []
            cases = plan(video, args.quick)
            for i, case in enumerate(cases, 1):
                res = spawn(__file__, case, args.timeout)
                results.append(res)
                done = res.get("error") or f"{1e3 * res['median_s']:.1f} ms, {res['clips_per_s']:.2f} clips/s"
                print(f"[{name} {i}/{len(cases)}] {_label(case)}: {done}", file=sys.stderr, flush=True)
            table, rows = summarise(results, video)
            tables.append(f"### {name}\n\n{table}")
            video = {k: v for k, v in video.items() if k != "path"}  # a deleted temporary file
            results = [{k: v for k, v in r.items() if k != "path"} for r in results]
            out["videos"].append({"name": name, "video": video, "summary": rows, "cases": results})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n\n".join(tables))
    write_json(args.out, out)
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
