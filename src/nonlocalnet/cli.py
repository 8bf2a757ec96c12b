"""``nonlocalnet`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import torch

from nonlocalnet import __version__
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.ops import MODES


def _example(args: argparse.Namespace) -> int:
    """Build a block, check it is the identity at init, train it one step, report what it did."""
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    size = tuple(args.size)
    block = NonLocalBlock(
        args.channels,
        mode=args.mode,
        dim=len(size),
        pool_before_conv=args.pool_before_conv,
        scale=args.scale,
    )
    x = torch.randn(args.batch, args.channels, *size, generator=gen)
    n = math.prod(size)
    m = math.prod(s // k for s, k in zip(size, block.pool_kernel, strict=True))
    params = sum(p.numel() for p in block.parameters())
    print(f"nonlocalnet {__version__}: NonLocalBlock({block.extra_repr()})")
    print(f"  parameters           {params:,}")
    print(f"  input                {tuple(x.shape)}  (N = {n} query positions, M = {m} keys)")

    identity = torch.equal(block(x), x)
    print(f"  identity at init     {identity}")

    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    target = x.roll(1, dims=-1)
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(block(x), target)
    loss.backward()
    opt.step()
    elapsed = time.perf_counter() - start
    moved = (block(x) - x).abs().mean().item()
    print(f"  one SGD step         loss {loss.item():.4f}, {elapsed * 1e3:.1f} ms (forward+backward)")
    print(f"  after the step       mean |z - x| = {moved:.2e} (the block now contributes)")

    dense = args.batch * n * m * 4
    print(
        f"  affinity never built {args.batch} x {n} x {m} fp32 would be {dense / 2**20:.1f} MiB; "
        f"algorithm {block.algorithm!r} computes y exactly without it"
    )
    query = tuple(s // 2 for s in size)
    block.eval()
    with torch.no_grad():
        weights = block.attention_weights(x[:1], [query])[0, 0]
    peak = tuple(int(i) for i in torch.unravel_index(weights.argmax(), weights.shape))
    print(
        f"  attention of {query}  over a {tuple(weights.shape)} key grid: "
        f"max weight {weights.max().item():.4f} at {peak}, sum {weights.sum().item():.4f}"
    )
    return 0 if identity else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nonlocalnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nonlocalnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("example", help="build a non-local block and show what it does")
    ex.add_argument("--mode", choices=MODES, default="embedded_gaussian")
    ex.add_argument("--channels", type=int, default=64)
    ex.add_argument("--size", type=int, nargs="+", default=[8, 14, 14], help="T H W (or H W, or L): 3D/2D/1D")
    ex.add_argument("--batch", type=int, default=2)
    ex.add_argument("--pool-before-conv", action="store_true", help="released code's pooling")
    ex.add_argument("--scale", action="store_true", help="multiply logits by Ck ** -0.5")
    ex.add_argument("--seed", type=int, default=0)
    ex.set_defaults(func=_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "example" and not 1 <= len(args.size) <= 3:
        print(f"error: --size takes 1 to 3 numbers, got {len(args.size)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
