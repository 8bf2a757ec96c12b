"""Parameters and GFLOPs (multiply-adds) of every registry model at its paper input size, beside
the paper's Table 2e ratios (R101, 32x224x224). Counting runs on the meta device: seconds.

    python benchmarks/complexity.py [--out benchmarks/results/complexity.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _harness import write_json

from nonlocalnet.models import build_model, get_model_info, list_models, measure_complexity

# Paper Table 2e (R101, 32x224x224): C2D absolute, the others relative to C2D.
PAPER = {
    "c2d_r101": (43.2, 34.2),
    "i3d3x3x3_r101": (1.5, 1.8),
    "i3d_r101": (1.2, 1.5),
    "c2d_nl5_r101": (1.2, 1.2),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "complexity.json")
    args = parser.parse_args()
    rows = []
    for name in list_models():
        info = get_model_info(name)
        for variant in ("paper", "released"):
            for stride_on_1x1 in (False, True):
                with torch.device("meta"):
                    model = build_model(name, variant=variant, stride_on_1x1=stride_on_1x1)
                c = measure_complexity(model, (1, 3, info.frames, 224, 224))
                rows.append(
                    {
                        "model": name,
                        "variant": variant,
                        "stride_on_1x1": stride_on_1x1,
                        "frames": info.frames,
                        "params_m": c.params / 1e6,
                        "gflops": c.gmacs,
                    }
                )
    get = lambda m, v="paper", s=False: next(  # noqa: E731
        r for r in rows if r["model"] == m and r["variant"] == v and r["stride_on_1x1"] == s
    )
    print("| model | frames | params (M) | GFLOPs (paper variant) | GFLOPs (released variant) |")
    print("|---|---|---|---|---|")
    for name in list_models():
        p, r = get(name), get(name, "released")
        print(f"| {name} | {p['frames']} | {p['params_m']:.2f} | {p['gflops']:.2f} | {r['gflops']:.2f} |")
    print(
        "\nAgainst the paper (Table 2e, R101, 32x224x224; ratios relative to C2D R101 of the same setting):\n"
    )
    print("| model | setting | params | paper | diff | GFLOPs | paper | diff |")
    print("|---|---|---|---|---|---|---|---|")
    checks = []
    for variant in ("paper", "released"):
        for s1 in (False, True):
            base = get("c2d_r101", variant, s1)
            for name, (p_ref, f_ref) in PAPER.items():
                r = get(name, variant, s1)
                absolute = name == "c2d_r101"
                params = r["params_m"] if absolute else r["params_m"] / base["params_m"]
                flops = r["gflops"] if absolute else r["gflops"] / base["gflops"]
                dp, df = params / p_ref - 1, flops / f_ref - 1
                setting = f"{variant}, stride on {'1x1' if s1 else '3x3'}"
                unit = "" if absolute else "x"
                checks.append(
                    {
                        "model": name,
                        "variant": variant,
                        "stride_on_1x1": s1,
                        "params": params,
                        "paper_params": p_ref,
                        "gflops": flops,
                        "paper_gflops": f_ref,
                    }
                )
                print(
                    f"| {name} | {setting} | {params:.3g}{unit} | {p_ref}{unit} | {100 * dp:+.1f}% "
                    f"| {flops:.3g}{unit} | {f_ref}{unit} | {100 * df:+.1f}% |"
                )
    write_json(args.out, {"models": rows, "paper_comparison": checks})


if __name__ == "__main__":
    main()
