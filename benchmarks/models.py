"""Benchmark the paper's video models: clips/s and peak memory, inference and one training step.

Models c2d_r50, c2d_nl5_r50, i3d_r50, i3d_nl5_r50 at 8x224x224 (batch 2) and 32x224x224
(batch 1); eager, channels_last_3d and torch.compile; and the non-local models with a naive
N x N block swapped in, all in one run, each case in its own process.

    python benchmarks/models.py                     # full table (long on 2 CPU cores)
    python benchmarks/models.py --impls eager channels_last       # skip the compiled cases
    python benchmarks/models.py --quick             # tiny frames, smoke test

Writes JSON (``--out``, default ``benchmarks/results/models.json``) and prints a Markdown table
with the checks: time(c2d_nl5) / time(c2d) against 1.3 x their GFLOPs ratio, and the naive
swap's training peak memory against ours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _harness import machine, measure, spawn, write_json

from nonlocalnet import NonLocalBlock, build_model
from nonlocalnet.models import measure_complexity

MODELS = ("c2d_r50", "c2d_nl5_r50", "i3d_r50", "i3d_nl5_r50")


def run_case(case: dict) -> dict:
    torch.manual_seed(0)
    model = build_model(case["model"], num_classes=400)
    if case["naive"]:
        for m in model.modules():
            if isinstance(m, NonLocalBlock):
                m.algorithm = "naive"
    shape = (case["batch"], 3, case["frames"], case["size"], case["size"])
    x = torch.randn(shape)
    if case["impl"] == "channels_last":
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    run = torch.compile(model) if case["impl"] == "compiled" else model
    if case["train"]:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        target = torch.randint(0, 400, (case["batch"],))

        def fn():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(run(x), target)
            loss.backward()
            opt.step()

    else:
        model.eval()

        def fn():
            with torch.no_grad():
                run(x)

    result = measure(fn, case["warmup"], case["repeats"])
    return {**case, **result, "clips_per_s": case["batch"] / result["median_s"]}


def plan(
    quick: bool,
    impls: list[str],
    passes: list[str],
    frames_list: list[int],
    models: tuple[str, ...] = MODELS,
    naive: bool = True,
) -> list[dict]:
    geometries = [(f, 2 if f == 8 else 1) for f in frames_list] if not quick else [(8, 1)]
    size = 64 if quick else 224
    cases = []
    for frames, batch in geometries:
        for train in [p == "train" for p in passes]:
            for model in models:
                variants = [(impl, False) for impl in impls]
                if naive and "nl" in model and "eager" in impls:
                    variants.append(("eager", True))
                for impl, swap in variants:
                    cases.append(
                        {
                            "model": model,
                            "frames": frames,
                            "batch": batch,
                            "size": size,
                            "train": train,
                            "impl": impl,
                            "naive": swap,
                            "warmup": 2 if impl == "compiled" else 1,
                            "repeats": 1 if quick else 3,
                        }
                    )
    return cases


def _label(c: dict) -> str:
    impl = "naive NL" if c["naive"] else c["impl"]
    geometry = f"{c['frames']}x{c['size']}x{c['size']} b{c['batch']}"
    return f"{c['model']} {geometry} {'train' if c['train'] else 'infer'} {impl}"


def summarise(results: list[dict], gflops: dict[tuple[str, int], float]) -> tuple[str, dict]:
    table = [
        "| model | input | pass | impl | clips/s | ms / step | peak extra MiB | GFLOPs / clip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        impl = "naive NL block" if r["naive"] else r["impl"]
        impl += f" ({r['tag']})" if r.get("tag") else ""
        cells = (
            ("-", "-", "-")
            if "error" in r
            else (f"{r['clips_per_s']:.2f}", f"{1e3 * r['median_s']:.0f}", f"{r['peak_extra_mib']:.0f}")
        )
        err = f" ({r['error']})" if "error" in r else ""
        table.append(
            f"| {r['model']} | {r['frames']}x{r['size']}x{r['size']} b{r['batch']} "
            f"| {'train' if r['train'] else 'infer'} | {impl}{err} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {gflops[(r['model'], r['frames'])]:.1f} |"
        )
    find = lambda **kw: next(  # noqa: E731
        (r for r in results if all(r.get(k) == v for k, v in kw.items()) and "error" not in r), None
    )
    checks: dict = {"efficiency": [], "naive_memory": []}
    lines = ["", "Checks:"]
    for frames in sorted({r["frames"] for r in results}):
        for train in (False, True):
            for impl in ("eager", "channels_last", "compiled"):
                nl = find(model="c2d_nl5_r50", frames=frames, train=train, impl=impl, naive=False)
                base = find(model="c2d_r50", frames=frames, train=train, impl=impl, naive=False)
                if not (nl and base):
                    continue
                t_ratio = nl["median_s"] / base["median_s"]
                f_ratio = gflops[("c2d_nl5_r50", frames)] / gflops[("c2d_r50", frames)]
                ok = t_ratio <= 1.3 * f_ratio
                checks["efficiency"].append(
                    {
                        "frames": frames,
                        "train": train,
                        "impl": impl,
                        "time_ratio": t_ratio,
                        "gflops_ratio": f_ratio,
                        "ok": ok,
                    }
                )
                lines.append(
                    f"- time(c2d_nl5_r50)/time(c2d_r50), {frames} frames, {'train' if train else 'infer'}, "
                    f"{impl}: {t_ratio:.2f} vs 1.3 x GFLOPs ratio {f_ratio:.2f} = {1.3 * f_ratio:.2f}: "
                    f"{'met' if ok else 'NOT met'}"
                )
        for model in ("c2d_nl5_r50", "i3d_nl5_r50"):
            ours = find(model=model, frames=frames, train=True, impl="eager", naive=False)
            naive = find(model=model, frames=frames, train=True, impl="eager", naive=True)
            if ours and naive:
                ratio = naive["peak_extra_mib"] / max(ours["peak_extra_mib"], 1e-9)
                checks["naive_memory"].append({"model": model, "frames": frames, "ratio": ratio})
                lines.append(
                    f"- {model} training at {frames} frames: naive N x N block peak "
                    f"{naive['peak_extra_mib']:.0f} MiB vs ours {ours['peak_extra_mib']:.0f} MiB "
                    f"({ratio:.2f}x)"
                )
    if len(lines) == 2:  # no pair to check (e.g. --models without the baselines)
        lines = []
    return "\n".join(table + lines), checks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["eager", "channels_last", "compiled"],
        choices=["eager", "channels_last", "compiled"],
    )
    parser.add_argument("--passes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 32], choices=[8, 32])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "models.json")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive N x N block swap")
    parser.add_argument("--tag", default="", help="a label for the rows (e.g. which code was measured)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return
    cases = plan(args.quick, args.impls, args.passes, args.frames, tuple(args.models), not args.no_naive)
    if args.tag:
        cases = [{**c, "tag": args.tag} for c in cases]
    gflops = {}
    for model in MODELS:
        for frames in {c["frames"] for c in cases}:
            size = cases[0]["size"]
            with torch.device("meta"):
                net = build_model(model)
            gflops[(model, frames)] = measure_complexity(net, (1, 3, frames, size, size)).gmacs
    results = []
    for i, case in enumerate(cases, 1):
        res = spawn(__file__, case, args.timeout)
        results.append(res)
        done = res.get("error") or f"{res['clips_per_s']:.2f} clips/s, {res['peak_extra_mib']:.0f} MiB"
        print(f"[{i}/{len(cases)}] {_label(case)}: {done}", file=sys.stderr, flush=True)
    table, checks = summarise(results, gflops)
    print(table)
    gf = [{"model": m, "frames": f, "gflops": g} for (m, f), g in gflops.items()]
    write_json(
        args.out,
        {"meta": {**machine(), "quick": args.quick}, "gflops": gf, "checks": checks, "cases": results},
    )
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
