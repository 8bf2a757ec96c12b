"""How fast can an exact, linear-memory softmax block be on this machine? A measured lower bound.

Any exact softmax attention whose memory stays linear in N cannot keep the ``N x M``
probabilities for the backward, so it recomputes them: 7 matrix products of ``N x M`` (forward
``S = Q K^T`` and ``O = P V``; backward ``S`` again, ``dP = dO V^T``, ``dV = P^T dO``,
``dQ = dS K``, ``dK = dS^T Q``) against the explicit form's 6. Whatever the algorithm, a block's
forward + backward therefore takes at least

    floor = rest + flops(7 products) / peak

where ``rest`` is the time of the block without its attention (its 1x1x1 convolutions, pooling,
norm and residual, with their backward), measured by running the block's own layers with the
attention replaced by a constant, and ``peak`` is the fastest matrix-product rate measured here
(float32, over full-size and cache-sized tiles of every product shape the block needs).

``twin / floor`` is then the largest speed-up over the explicit ``N x M`` twin that any such
algorithm can reach on this machine. All blocks run in one process, in turn, so drift and load
hit all alike; times are medians.

    python benchmarks/floor.py                    # the N = 12544 block case, both softmax modes
    python benchmarks/floor.py --quick            # tiny sizes (smoke test)

Writes ``benchmarks/results/floor.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _harness import machine, measure, spawn, write_json

from nonlocalnet import NonLocalBlock
from nonlocalnet.layers import nonlocal_block

CASES = [
    # (label, in_channels, T, H, W): the N = 12544 case; keys subsampled to M = N / 4
    ("n12544", 512, 16, 28, 28),
]
TILE = 1024  # the recomputing backward's tile side (ops/dispatch.py: backward_keys)


def _constant_attention(mode, theta, phi, g, **kwargs):
    """Stands in for the attention: a constant ``(B, N, Cv)`` through which theta, phi and g
    still get a gradient (through their means), no ``N x M`` work."""
    y = theta.mean() + phi.mean() + g.mean()
    return y.expand(theta.shape[0], theta.shape[1], g.shape[2])


def _rest(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's own forward with its attention replaced by a constant: every other layer
    and its backward runs."""
    real = nonlocal_block.nonlocal_op
    nonlocal_block.nonlocal_op = _constant_attention
    try:
        return block(x)
    finally:
        nonlocal_block.nonlocal_op = real


def _products(n: int, m: int, ck: int, cv: int) -> list[tuple[str, int, int, int, int, str]]:
    """(name, rows, inner, cols, count in the recomputing algorithm, which of rows / inner / cols
    run over positions: ``p``, or channels: ``c``) of every product."""
    return [
        ("S = Q K^T", n, ck, m, 2, "pcp"),
        ("O = P V", n, m, cv, 1, "ppc"),
        ("dP = dO V^T", n, cv, m, 1, "pcp"),
        ("dV = P^T dO", m, n, cv, 1, "ppc"),
        ("dQ = dS K", n, m, ck, 1, "ppc"),
        ("dK = dS^T Q", m, n, ck, 1, "ppc"),
    ]


def _peak_gflops(n: int, m: int, ck: int, cv: int, repeats: int) -> dict:
    """Float32 product rates over the block's product shapes: full size, and as cache-sized tiles
    (positions capped at :data:`TILE`, as the recomputing backward cuts them)."""
    rates = {}
    for name, r, k, c, _, kinds in _products(n, m, ck, cv):
        tile = tuple(min(d, TILE) if kind == "p" else d for d, kind in zip((r, k, c), kinds, strict=True))
        for label, (rr, kk, cc) in (("full", (r, k, c)), ("tile", tile)):
            a, b = torch.randn(1, rr, kk), torch.randn(1, kk, cc)
            out = torch.empty(1, rr, cc)
            s = measure(lambda a=a, b=b, out=out: torch.bmm(a, b, out=out), 1, repeats)["median_s"]
            rates[f"{name} {label} {rr}x{kk}x{cc}"] = 2.0 * rr * kk * cc / s / 1e9
    return rates


def run_case(case: dict) -> dict:
    """Twin, ours (auto) and the block without attention, in turn; then the product rates."""
    torch.manual_seed(0)
    cin, mode = case["in_channels"], case["mode"]
    x = torch.randn(1, cin, case["t"], case["h"], case["w"], requires_grad=True)
    blocks = {
        a: NonLocalBlock(cin, cin // 2, mode=mode, use_scale=True, sub_sample=True, algorithm=a).train()
        for a in ("naive", "auto")
    }
    blocks["auto"].load_state_dict(blocks["naive"].state_dict())
    calls = {
        "twin": lambda: blocks["naive"](x).sum().backward(),
        "ours": lambda: blocks["auto"](x).sum().backward(),
        "rest": lambda: _rest(blocks["naive"], x).sum().backward(),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():  # warm-up
        fn()
    x.grad = None
    for b in blocks.values():
        b.zero_grad(set_to_none=True)
    for _ in range(case["repeats"]):
        for k, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
            x.grad = None
            for b in blocks.values():
                b.zero_grad(set_to_none=True)
    n = case["t"] * case["h"] * case["w"]
    m = case["t"] * (case["h"] // 2) * (case["w"] // 2)
    ck = cin if mode == "gaussian" else cin // 2
    cv = cin // 2
    rates = _peak_gflops(n, m, ck, cv, case["repeats"])
    flops = {
        "recomputing": sum(2.0 * r * k * c * count for _, r, k, c, count, _ in _products(n, m, ck, cv)),
        "explicit": sum(2.0 * r * k * c for _, r, k, c, _, _ in _products(n, m, ck, cv)),
    }
    return {
        **case,
        "n": n,
        "m": m,
        "ck": ck,
        "cv": cv,
        "times_s": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "gflops_per_s": rates,
        "flops": flops,
    }


def bounds(r: dict) -> dict:
    """The floors and ratios of one measured case."""
    peak = max(r["gflops_per_s"].values()) * 1e9
    med = r["median_s"]
    floor = med["rest"] + r["flops"]["recomputing"] / peak
    twin_floor = med["rest"] + r["flops"]["explicit"] / peak
    return {
        "peak_gflops": peak / 1e9,
        "floor_s": floor,
        "twin_floor_s": twin_floor,
        "max_speedup_over_twin": med["twin"] / floor,
        "ours_over_twin": med["twin"] / med["ours"],
        "ours_over_floor": med["ours"] / floor,
        "twin_over_its_floor": med["twin"] / twin_floor,
    }


def summarise(results: list[dict]) -> str:
    lines = [
        "| case | mode | twin s | ours (auto) s | without attention s | peak GFLOP/s | floor s "
        "| ours vs twin | best possible vs twin | ours / floor | twin / its floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['mode']} | failed: {r['error']} | | | | | | | | |")
            continue
        b, med = bounds(r), r["median_s"]
        lines.append(
            f"| {r['case']}: 1x{r['in_channels']}x{r['t']}x{r['h']}x{r['w']}, N={r['n']}, M={r['m']} "
            f"| {r['mode']} | {med['twin']:.3f} | {med['ours']:.3f} | {med['rest']:.3f} "
            f"| {b['peak_gflops']:.0f} | {b['floor_s']:.3f} | {b['ours_over_twin']:.2f}x "
            f"| {b['max_speedup_over_twin']:.2f}x | {b['ours_over_floor']:.2f} "
            f"| {b['twin_over_its_floor']:.2f} |"
        )
    lines += [
        "",
        "floor = without attention + (7 products of N x M) / peak: no exact algorithm with memory "
        "linear in N can run the block faster on this machine; 'best possible vs twin' = twin / floor; "
        "the twin's own floor counts its 6 products.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "floor.json")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import json

        print(json.dumps(run_case(json.loads(args.worker))))
        return
    cases = [("quick", 16, 4, 8, 8)] if args.quick else CASES
    results = []
    for label, cin, t, h, w in cases:
        for mode in ("embedded_gaussian", "gaussian"):
            case = {"case": label, "in_channels": cin, "t": t, "h": h, "w": w, "mode": mode}
            res = spawn(__file__, {**case, "repeats": 1 if args.quick else args.repeats}, args.timeout)
            results.append(res)
            print(summarise([res]).splitlines()[-3], file=sys.stderr, flush=True)
    print(summarise(results))
    write_json(args.out, {"kind": "floor", "meta": machine(), "cases": results})
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
