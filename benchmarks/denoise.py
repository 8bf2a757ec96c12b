"""Non-local means: ours vs scikit-image (fast and slow mode) vs OpenCV, in one run.

scikit-image's bundled ``camera`` image downsampled to 256x256 (and upsampled to 1024x1024),
Gaussian noise sigma = 0.1 (seed 0), and a 16-frame video (the 256x256 image panning 2 px per
frame). Ours runs with Gaussian-weighted patch distances (the default, like scikit-image's slow
mode) and with uniform ones (like its fast mode). Every method uses 7x7 patches and a 21x21
search window and is run at its best ``h`` on
the same grid (multiples of sigma), as an oracle for all alike. Reports PSNR, SSIM and the
median time of 3 runs at that ``h``.

    python benchmarks/denoise.py [--quick] [--out benchmarks/results/denoise.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _harness import machine, write_json

from nonlocalnet.denoise import nl_means, nl_means_video

SIGMA = 0.1
H_FACTORS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)


def _median_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _methods(video: bool):
    import cv2
    from skimage.restoration import denoise_nl_means

    def ours(weights):
        def run(x, h):
            t = torch.from_numpy(x.astype(np.float32))
            kw = {"sigma": SIGMA, "h": h, "patch_weights": weights}
            if video:
                return nl_means_video(t[:, None], temporal_window=3, **kw)[:, 0].numpy()
            return nl_means(t, **kw).numpy()

        return run

    def sk(fast):
        def run(x, h):
            kw = {"h": h, "sigma": SIGMA, "patch_size": 7, "patch_distance": 10, "fast_mode": fast}
            if video:
                return np.stack([denoise_nl_means(f, **kw) for f in x])
            return denoise_nl_means(x, **kw)

        return run

    def opencv(x, h):
        u8 = np.clip(x * 255, 0, 255).round().astype(np.uint8)
        if video:
            frames = list(u8)
            out = [
                cv2.fastNlMeansDenoisingMulti(
                    frames, i, 1 if 0 < i < len(frames) - 1 else 0, None, h * 255, 7, 21
                )
                if 0 < i < len(frames) - 1
                else cv2.fastNlMeansDenoising(frames[i], None, h * 255, 7, 21)
                for i in range(len(frames))
            ]
            return np.stack(out).astype(np.float64) / 255
        return cv2.fastNlMeansDenoising(u8, None, h * 255, 7, 21).astype(np.float64) / 255

    methods = {
        "nonlocalnet gaussian": ours("gaussian"),
        "nonlocalnet uniform": ours("uniform"),
        "skimage fast": sk(True),
        "opencv": opencv,
    }
    if not video:
        methods["skimage slow"] = sk(False)
    return methods


def run_case(name: str, clean: np.ndarray, video: bool, repeats: int, slow_ok: bool) -> list[dict]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    noisy = clean + SIGMA * rng.standard_normal(clean.shape)
    rows = []
    for method, fn in _methods(video).items():
        if method == "skimage slow" and not slow_ok:
            continue
        best = None
        for factor in H_FACTORS:
            out = fn(noisy, factor * SIGMA)
            p = peak_signal_noise_ratio(clean, np.asarray(out, dtype=np.float64), data_range=1.0)
            if best is None or p > best[1]:
                best = (factor, p)
        factor, _ = best
        seconds, out = _median_time(lambda fn=fn, f=factor: fn(noisy, f * SIGMA), repeats)
        out = np.asarray(out, dtype=np.float64)
        ssim = (
            np.mean([structural_similarity(c, o, data_range=1.0) for c, o in zip(clean, out, strict=True)])
            if video
            else structural_similarity(clean, out, data_range=1.0)
        )
        rows.append(
            {
                "case": name,
                "method": method,
                "h_over_sigma": factor,
                "psnr": peak_signal_noise_ratio(clean, out, data_range=1.0),
                "ssim": float(ssim),
                "median_s": seconds,
            }
        )
        print(f"{name} {method}: h={factor}sigma {rows[-1]['psnr']:.2f} dB {seconds:.3f} s", file=sys.stderr)
    noisy_psnr = peak_signal_noise_ratio(clean, noisy, data_range=1.0)
    rows.append({"case": name, "method": "noisy input", "psnr": noisy_psnr, "ssim": None, "median_s": None})
    return rows


def summarise(rows: list[dict]) -> str:
    """Markdown table: each method's best h, PSNR, SSIM and time against ours per case."""
    lines = [
        "| case | method | best h / sigma | PSNR dB | SSIM | median s | time vs ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = next(o for o in rows if o["case"] == r["case"] and o["method"] == "nonlocalnet gaussian")
        ratio = "" if r["median_s"] is None else f"{r['median_s'] / ours['median_s']:.2f}x"
        h = "" if "h_over_sigma" not in r else r["h_over_sigma"]
        ssim = "" if r["ssim"] is None else f"{r['ssim']:.4f}"
        secs = "" if r["median_s"] is None else f"{r['median_s']:.3f}"
        lines.append(f"| {r['case']} | {r['method']} | {h} | {r['psnr']:.2f} | {ssim} | {secs} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64x64 image only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "denoise.json")
    args = parser.parse_args()
    from skimage import data, transform

    camera = data.camera().astype(np.float64) / 255
    small = transform.resize(camera, (64, 64) if args.quick else (256, 256), anti_aliasing=True)
    rows = run_case(f"camera {small.shape[0]}x{small.shape[1]}", small, False, 1 if args.quick else 3, True)
    if not args.quick:
        big = transform.resize(camera, (1024, 1024), anti_aliasing=True)
        rows += run_case("camera 1024x1024", big, False, 1, slow_ok=False)
        pad = np.pad(small, ((0, 0), (0, 32)), mode="reflect")
        video = np.stack([pad[:, 2 * i : 2 * i + 224] for i in range(16)])
        rows += run_case("video 16x256x224", video, True, 1, slow_ok=False)
    print(summarise(rows))
    write_json(args.out, {"meta": machine(), "sigma": SIGMA, "h_grid": H_FACTORS, "rows": rows})


if __name__ == "__main__":
    main()
