"""Benchmark the non-local operation: ours vs the naive N x N forms, in one run.

Every case runs in its own process, so its peak memory is its own: peak extra memory is the
process's peak resident set size minus its resident size once the inputs exist. Times are
medians. The machine's fp32 matmul throughput is measured in the same run and each fused
softmax case reports the fraction of it that it achieves.

    python benchmarks/block.py                      # full table (about 20 minutes on 2 cores)
    python benchmarks/block.py --quick              # seconds, small sizes (smoke test)

Writes JSON (``--out``, default ``benchmarks/results/block.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _harness import machine, measure, spawn, write_json

from nonlocalnet.ops import nonlocal_op

NAIVE = {"gaussian": "naive", "embedded_gaussian": "naive", "dot_product": "quadratic"}


def run_case(case: dict) -> dict:
    """One measurement in this process."""
    torch.manual_seed(0)
    b, n, m, ck, cv = case["batch"], case["n"], case["m"], case["ck"], case["cv"]
    if case["kind"] == "matmul":
        a, w = torch.randn(n, ck), torch.randn(ck, m)
        fn = lambda: a @ w  # noqa: E731
        flops = 2.0 * n * m * ck
    else:
        grad = case["backward"]
        # channel-major, as the block passes them: transposed views of (B, C, positions) maps
        theta = (torch.randn(b, ck, n) * ck**-0.25).transpose(1, 2).requires_grad_(grad)
        phi = (torch.randn(b, ck, m) * ck**-0.25).transpose(1, 2).requires_grad_(grad)
        g = torch.randn(b, cv, m).transpose(1, 2).requires_grad_(grad)
        w = (torch.randn(2 * ck) * ck**-0.5).requires_grad_(grad)
        leaves = (theta, phi, g, w)

        def fn():
            y = nonlocal_op(case["mode"], theta, phi, g, weight=w, algorithm=case["algorithm"])
            if grad:
                y.backward(torch.ones_like(y))
                for t in leaves:
                    t.grad = None
            return y

        # FLOPs (2 per multiply-add) of the quadratic form, which the fused kernel also does;
        # backward counted as twice the forward
        flops = 2.0 * b * n * m * (ck + cv) * (3 if grad else 1)
    result = measure(fn, case["warmup"], case["repeats"])
    return {**case, **result, "gflops_per_s": flops / result["median_s"] / 1e9}


def plan(quick: bool) -> list[dict]:
    batch, cin, cinter = (2, 64, 32) if quick else (2, 1024, 512)
    sizes = (64, 256) if quick else (784, 3136, 12544)
    mid = sizes[1]
    cases = [
        {
            "kind": "matmul",
            "batch": 1,
            "n": mid,
            "m": mid,
            "ck": cinter,
            "cv": 0,
            "warmup": 2,
            "repeats": 7,
            "mode": "matmul",
            "algorithm": "sgemm",
            "backward": False,
        }
    ]
    for n in sizes:
        reps = {sizes[0]: 5, mid: 3}.get(n, 2)
        for backward in (False, True):
            for mode in ("gaussian", "embedded_gaussian", "dot_product", "concatenation"):
                ck = cin if mode == "gaussian" else cinter
                refs = ["pairwise", "explicit"] if n == sizes[0] else ["pairwise"]
                algos = ["auto", *(refs if mode == "concatenation" else [NAIVE[mode]])]
                for algorithm in algos:
                    heavy = algorithm == "explicit"
                    cases.append(
                        {
                            "kind": "op",
                            "mode": mode,
                            "algorithm": algorithm,
                            "batch": batch,
                            "n": n,
                            "m": n,
                            "ck": ck,
                            "cv": cinter,
                            "backward": backward,
                            "warmup": 0 if heavy or n == sizes[-1] else 1,
                            "repeats": 1 if heavy else reps,
                        }
                    )
    big = (1024, 64) if quick else (16 * 56 * 56, 128)
    cases.append(
        {
            "kind": "op",
            "mode": "embedded_gaussian",
            "algorithm": "auto",
            "batch": 2,
            "n": big[0],
            "m": big[0],
            "ck": big[1],
            "cv": big[1],
            "backward": True,
            "warmup": 0,
            "repeats": 1,
            "large": True,
        }
    )
    return cases


def _fmt_case(r: dict) -> str:
    return f"{r['mode']} {r['algorithm']} N={r['n']} {'fwd+bwd' if r['backward'] else 'fwd'}"


def _ms(r: dict) -> str:
    return "-" if "error" in r else f"{1e3 * r['median_s']:.1f}"


def _mib(r: dict) -> str:
    return "-" if "error" in r else f"{r['peak_extra_mib']:.0f}"


def summarise(results: list[dict]) -> tuple[str, list[dict]]:
    """Markdown table: ours vs each quadratic form of the same case, with ratios."""
    mm = next(r for r in results if r["kind"] == "matmul")
    ops = [r for r in results if r["kind"] == "op" and not r.get("large")]
    key = lambda r: (r["mode"], r["n"], r["backward"])  # noqa: E731
    rows, table = (
        [],
        [
            f"fp32 matmul throughput ({mm['n']}x{mm['ck']} @ {mm['ck']}x{mm['m']}): "
            f"{mm['gflops_per_s']:.1f} GFLOP/s",
            "",
            "| mode | N = M | pass | ours ms | ours peak MiB | reference | ref ms | ref peak MiB "
            "| speed-up | memory ratio | ours % of matmul |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ],
    )
    for r in ops:
        if r["algorithm"] != "auto":
            continue
        for ref in (o for o in ops if key(o) == key(r) and o is not r):
            row = {"mode": r["mode"], "n": r["n"], "backward": r["backward"], "reference": ref["algorithm"]}
            frac = ""
            if "error" not in r and not r["backward"] and r["mode"] in ("gaussian", "embedded_gaussian"):
                row["matmul_fraction"] = r["gflops_per_s"] / mm["gflops_per_s"]
                frac = f"{100 * row['matmul_fraction']:.0f}%"
            if "error" in r or "error" in ref:
                bad = r if "error" in r else ref
                speed, mem = f"{bad['algorithm']} failed: {bad['error']}", "-"
            else:
                row["speedup"] = ref["median_s"] / r["median_s"]
                row["memory_ratio"] = r["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
                speed, mem = f"{row['speedup']:.2f}x", f"{row['memory_ratio']:.3f}"
            rows.append(row)
            table.append(
                f"| {r['mode']} | {r['n']} | {'fwd+bwd' if r['backward'] else 'fwd'} | {_ms(r)} "
                f"| {_mib(r)} | {ref['algorithm']} | {_ms(ref)} | {_mib(ref)} | {speed} | {mem} | {frac} |"
            )
    for r in results:
        if r.get("large"):
            need = 2 * r["batch"] * r["n"] * r["m"] * 4 / 2**30
            status = r.get("error") or f"{r['median_s']:.1f} s, peak extra {r['peak_extra_mib']:.0f} MiB"
            rows.append(
                {
                    "mode": r["mode"],
                    "n": r["n"],
                    "backward": True,
                    "large": True,
                    "seconds": r.get("median_s"),
                    "peak_extra_mib": r.get("peak_extra_mib"),
                    "naive_needs_gib": need,
                }
            )
            table += [
                "",
                f"Large case: embedded Gaussian fwd+bwd, B={r['batch']}, N=M={r['n']}, "
                f"Ck=Cv={r['ck']} (in_channels {2 * r['ck']}): ours {status}; the naive form needs "
                f"at least {need:.0f} GiB for the logits and the softmax alone.",
            ]
    return "\n".join(table), rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--glibc-malloc", action="store_true", help="don't set CACHING_MALLOC")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "block.json")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return
    results = []
    cases = plan(args.quick)
    for i, case in enumerate(cases, 1):
        res = spawn(__file__, case, args.timeout, caching_malloc=not args.glibc_malloc)
        results.append(res)
        done = res.get("error") or f"{1e3 * res['median_s']:.1f} ms, {res['peak_extra_mib']:.0f} MiB"
        print(f"[{i}/{len(cases)}] {_fmt_case(case)}: {done}", file=sys.stderr, flush=True)
    table, rows = summarise(results)
    print(table)
    meta = {**machine(), "quick": args.quick, "caching_malloc": not args.glibc_malloc}
    write_json(args.out, {"meta": meta, "summary": rows, "cases": results})
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
