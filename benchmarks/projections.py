"""The block's 1x1 convolutions as batched matrix products against calling the conv modules.

``NonLocalBlock(projection="gemm")`` computes theta, phi, g and ``W_z`` from their weights as
batched GEMMs on a ``(B, N, C)`` view of the input (``nonlocalnet.layers.pointwise``);
``projection="conv"`` (the default) calls the conv modules on channel-first maps. Both blocks,
with the same weights, run forward + backward on one input in one process, in turn (drift and
other load hit both alike), each case in its own process; medians and the peak extra memory of
each.

    python benchmarks/projections.py             # the video models' and the headline's shapes
    python benchmarks/projections.py --quick     # tiny shapes (smoke test)

Writes ``benchmarks/results/projections.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _harness import machine, measure_in_turn, spawn, write_json

from nonlocalnet import NonLocalBlock

SHAPES = [
    # (B, C, T, H, W): the res3 and res4 blocks of the 8-frame models (batch 2), larger batches
    # of those maps, the N = 12544 case and the mmcv headline case
    (2, 512, 4, 28, 28),
    (2, 1024, 4, 14, 14),
    (8, 512, 4, 28, 28),
    (8, 1024, 4, 14, 14),
    (1, 512, 16, 28, 28),
    (1, 256, 16, 56, 56),
]
MODES = ("embedded_gaussian", "gaussian")


def run_case(case: dict) -> dict:
    """Both forms on one input, a warm-up call each, then ``repeats`` calls each in turn."""
    torch.manual_seed(0)
    shape = tuple(case["shape"])
    x = torch.randn(*shape, requires_grad=True)
    blocks = {
        name: NonLocalBlock(shape[1], shape[1] // 2, mode=case["mode"], use_scale=True, projection=p).train()
        for name, p in (("modules", "conv"), ("products", "gemm"))
    }
    blocks["products"].load_state_dict(blocks["modules"].state_dict())

    def reset() -> None:
        x.grad = None
        for block in blocks.values():
            block.zero_grad(set_to_none=True)

    calls = {name: (lambda block=block: block(x).sum().backward()) for name, block in blocks.items()}
    runs = measure_in_turn(calls, case["repeats"], warmup=1, reset=reset)
    return {**case, "runs": runs}


def summarise(cases: list[dict]) -> str:
    lines = [
        "| B x C x T x H x W | mode | conv modules ms | matrix products ms | speed-up "
        "| peak extra MiB (modules / products) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        label = "x".join(str(d) for d in c["shape"])
        if "error" in c:
            lines.append(f"| {label} | {c['mode']} | failed: {c['error']} | | | |")
            continue
        m, p = c["runs"]["modules"], c["runs"]["products"]
        lines.append(
            f"| {label} | {c['mode']} | {1e3 * m['median_s']:.0f} | {1e3 * p['median_s']:.0f} "
            f"| {m['median_s'] / p['median_s']:.2f}x "
            f"| {m['peak_extra_mib']:.0f} / {p['peak_extra_mib']:.0f} |"
        )
    return "\n".join(lines)


def plan(quick: bool, repeats: int) -> list[dict]:
    shapes = [(2, 16, 2, 8, 8), (1, 32, 4, 8, 8)] if quick else SHAPES
    return [{"shape": list(s), "mode": m, "repeats": repeats} for s in shapes for m in MODES]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "projections.json")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return
    results = []
    for case in plan(args.quick, args.repeats):
        res = spawn(__file__, case, args.timeout)
        results.append(res)
        print(summarise([res]).splitlines()[-1], file=sys.stderr, flush=True)
    print(summarise(results))
    write_json(args.out, {"meta": {**machine(), "quick": args.quick}, "cases": results})
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
