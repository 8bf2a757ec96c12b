"""Parameters and GFLOPs (multiply-adds) of every registry model at its paper input size, beside
the paper's Table 2e ratios (R101, 32x224x224). Counting runs on the meta device: seconds.

    python benchmarks/complexity.py [--out benchmarks/results/complexity.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _harness import write_json

from nonlocalnet.models import build_model, list_models, measure_complexity, model_info

# Paper Table 2e (R101, 32x224x224): C2D absolute, the others relative to C2D.
PAPER = {
    "c2d_r101": (43.2, 34.2),
    "i3d3x3x3_r101": (1.5, 1.8),
    "i3d_r101": (1.2, 1.5),
    "c2d_nl5_r101": (1.2, 1.2),
}


def _get(rows: list[dict], model: str, variant: str = "paper", stride_on_1x1: bool = False) -> dict:
    key = (model, variant, stride_on_1x1)
    return next(r for r in rows if (r["model"], r["variant"], r["stride_on_1x1"]) == key)


def paper_comparison(rows: list[dict]) -> list[dict]:
    """Table 2e's models beside the paper: C2D R101 absolute, the others relative to it."""
    checks = []
    for variant in ("paper", "released"):
        for s1 in (False, True):
            base = _get(rows, "c2d_r101", variant, s1)
            for name, (p_ref, f_ref) in PAPER.items():
                r = _get(rows, name, variant, s1)
                absolute = name == "c2d_r101"
                checks.append(
                    {
                        "model": name,
                        "variant": variant,
                        "stride_on_1x1": s1,
                        "params": r["params_m"] if absolute else r["params_m"] / base["params_m"],
                        "paper_params": p_ref,
                        "gflops": r["gflops"] if absolute else r["gflops"] / base["gflops"],
                        "paper_gflops": f_ref,
                    }
                )
    return checks


def summarise(rows: list[dict], checks: list[dict]) -> str:
    """Markdown: every model's size (paper and released variant), then the paper comparison."""
    lines = [
        "| model | frames | params (M) | GFLOPs (paper variant) | GFLOPs (released variant) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        p, r = _get(rows, name), _get(rows, name, "released")
        lines.append(
            f"| {name} | {p['frames']} | {p['params_m']:.2f} | {p['gflops']:.2f} | {r['gflops']:.2f} |"
        )
    lines += [
        "",
        "Against the paper (Table 2e, R101, 32x224x224; ratios relative to C2D R101 of the same setting):",
        "",
        "| model | setting | params | paper | diff | GFLOPs | paper | diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        absolute = c["model"] == "c2d_r101"
        unit = "" if absolute else "x"
        params, flops, p_ref, f_ref = c["params"], c["gflops"], c["paper_params"], c["paper_gflops"]
        dp, df = params / p_ref - 1, flops / f_ref - 1
        setting = f"{c['variant']}, stride on {'1x1' if c['stride_on_1x1'] else '3x3'}"
        lines.append(
            f"| {c['model']} | {setting} | {params:.3g}{unit} | {p_ref}{unit} | {100 * dp:+.1f}% "
            f"| {flops:.3g}{unit} | {f_ref}{unit} | {100 * df:+.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "complexity.json")
    args = parser.parse_args()
    rows = []
    for name in list_models("video"):
        info = model_info(name)
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
    checks = paper_comparison(rows)
    print(summarise(rows, checks))
    write_json(args.out, {"models": rows, "paper_comparison": checks})


if __name__ == "__main__":
    main()
