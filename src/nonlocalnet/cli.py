"""``nonlocalnet`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import torch

from nonlocalnet import __version__
from nonlocalnet.cli_detection import add_detection_commands
from nonlocalnet.cli_video import add_video_commands, parse_train
from nonlocalnet.data.bad_data import DataQualityError
from nonlocalnet.engine.distributed import DistributedError
from nonlocalnet.errors import InvalidValueError, NonLocalNetError
from nonlocalnet.layers import NonLocalBlock
from nonlocalnet.models import VARIANTS
from nonlocalnet.models.resnet3d import BACKBONE_NORMS
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
        use_scale=args.use_scale,
    )
    x = torch.randn(args.batch, args.channels, *size, generator=gen)
    n = math.prod(size)
    kernel = block.pool_kernel or (1,) * len(size)  # no sub-sampling: every position is a key
    m = math.prod(s // k for s, k in zip(size, kernel, strict=True))
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
        weights = block.attention_map(x[:1], [query])[0, 0]
    peak = tuple(int(i) for i in torch.unravel_index(weights.argmax(), weights.shape))
    print(
        f"  attention of {query}  over a {tuple(weights.shape)} key grid: "
        f"max weight {weights.max().item():.4f} at {peak}, sum {weights.sum().item():.4f}"
    )
    return 0 if identity else 1


def _info(args: argparse.Namespace) -> int:
    """Parameters and GFLOPs of a registry model at the paper's input size."""
    from nonlocalnet.models import build_model, measure_complexity, model_info

    info = model_info(args.model, "video")
    for option, value in (
        ("--size", args.size),
        ("--frames", args.frames),
        ("--num-classes", args.num_classes),
    ):
        if value is not None and value < 1:  # --frames 0 was the default, --size 0 a traceback
            raise InvalidValueError(f"{option} must be >= 1, got {value}")
    frames = args.frames if args.frames is not None else info.frames
    if frames is None:  # a video model's info always gives its clip length
        raise InvalidValueError(f"{args.model} has no clip length: give --frames")
    with torch.device("meta"):
        model = build_model(args.model, num_classes=args.num_classes, variant=args.variant)
    c = measure_complexity(model, (1, 3, frames, args.size, args.size))
    print(f"{args.model} (variant {args.variant!r}, {info.nonlocal_blocks} non-local blocks)")
    print(f"  input        1 x 3 x {frames} x {args.size} x {args.size}")
    print(f"  parameters   {c.params / 1e6:.2f} M")
    print(f"  GFLOPs       {c.gmacs:.2f} (multiply-adds)")
    for op, g in sorted(c.by_op.items(), key=lambda kv: -kv[1]):
        print(f"    {op:<28s} {g:.3f}")
    if info.paper:
        print(f"  paper Kinetics-400 top-1/top-5: {info.paper['top1']}/{info.paper['top5']}")
    return 0


def _convert_caffe2(args: argparse.Namespace) -> int:
    """Released .pkl -> safetensors for a registry model."""
    from nonlocalnet.models import convert_caffe2_checkpoint

    report, meta = convert_caffe2_checkpoint(
        args.input,
        args.output,
        model=args.model,
        backbone_norm=args.norm,
        num_classes=args.num_classes,
        strict=not args.allow_partial,
        keys={"name": "--model", "backbone_norm": "--norm"},
    )
    print(report.summary())
    bn = "frozen BN" if meta["backbone_norm"] == "affine" else "BatchNorm"
    print(f"wrote {args.output} ({meta['model']}, released variant, {bn})")
    return 0


def _denoise(args: argparse.Namespace) -> int:
    """Non-local means on an image or a video file."""
    from nonlocalnet.denoise import estimate_sigma, nl_means, nl_means_video
    from nonlocalnet.denoise.io import denoise_file

    opts = {"h": args.h, "patch_size": args.patch_size, "search_window": args.search_window}
    first_sigma: dict[str, float] = {}

    def video_fn(chunk: torch.Tensor) -> torch.Tensor:
        # one noise level for the whole video: given, or estimated on its first frames
        sigma = (
            args.sigma
            if args.sigma is not None
            else first_sigma.setdefault("sigma", estimate_sigma(chunk).mean().item())
        )
        return torch.as_tensor(
            nl_means_video(chunk, sigma=sigma, temporal_window=args.temporal_window, **opts)
        )

    summary = denoise_file(
        args.input,
        args.output,
        image_fn=lambda image: torch.as_tensor(nl_means(image, sigma=args.sigma, **opts)),
        video_fn=video_fn,
        temporal_context=args.temporal_window // 2,
        progress=not args.no_progress,
    )
    print(summary)
    return 0


def _weights(args: argparse.Namespace) -> int:
    """The weights catalogue; one entry in full; downloads."""
    from nonlocalnet.models import get_weights, list_weights, weights_file
    from nonlocalnet.models.zoo import cache_paths

    if args.download and not args.names:
        raise InvalidValueError("--download needs the weights names (`nonlocalnet weights` lists them)")
    if args.download:
        for name in args.names:
            path = weights_file(name, cache_dir=args.cache_dir, progress=not args.no_progress)
            print(f"{get_weights(name).name}: {path}")
        return 0
    if args.names:
        for name in args.names:
            _print_entry(get_weights(name), cache_paths(name, cache_dir=args.cache_dir))
        return 0
    names = list_weights(model=args.model)
    if not names:
        raise InvalidValueError(f"no weights for model {args.model!r} (`nonlocalnet weights` lists them all)")
    print(f"{'name':<42s} {'model':<20s} {'clips':<6s} {'BN':<6s} {'reported':<22s} cached")
    for name in names:
        e = get_weights(name)
        what = _METRIC_LABELS.get(next(iter(e.metrics), ""), "")
        reported = f"{what} {'/'.join(str(v) for v in e.metrics.values())}" if e.metrics else "-"
        clips = f"{e.frames}x{e.sample_rate}" if e.frames else "-"
        bn = {"affine": "frozen", "batchnorm": "BN"}.get(e.backbone_norm or "", "-")
        cached = "yes" if cache_paths(e, cache_dir=args.cache_dir)[1].is_file() else ""
        print(f"{e.name:<42s} {e.model or e.kind:<20s} {clips:<6s} {bn:<6s} {reported:<22s} {cached}")
    print("# nonlocalnet weights NAME: details; --download NAME: fetch (and convert) into the cache")
    return 0


_METRIC_LABELS = {"top1": "top-1/5", "acc@1": "ImageNet", "box_map": "COCO AP"}


def _print_entry(e, paths) -> None:
    raw, usable = paths
    model = e.model or ("any registry model of its depth (inflated)" if e.kind == "imagenet" else None)
    if e.sha256:
        digest = e.sha256
    else:
        digest = f"prefix {e.hash_prefix} (in the file name)" if e.hash_prefix else "not published"
    print(e.name)
    rows = [
        ("url", e.url + (f" (member {e.member})" if e.member else "")),
        ("kind", f"{e.kind} ({e.dataset}, {e.num_classes} classes)"),
        ("model", model),
        ("variant / BN", f"{e.variant} / {e.backbone_norm}" if e.variant else None),
        ("clips", f"{e.frames} frames every {e.sample_rate}" if e.frames else None),
        ("reported", ", ".join(f"{k} {v}" for k, v in e.metrics.items()) or "not published"),
        ("in the paper", ", ".join(f"{k} {v}" for k, v in e.paper_metrics.items()) or None),
        ("sha256", digest),
        ("licence", e.licence),
        ("source", e.reference),
        ("notes", e.notes or None),
        ("download to", f"{raw}{'  (present)' if raw.is_file() else ''}"),
        ("loaded from", f"{usable}{'  (present)' if usable.is_file() else ''}"),
        ("aliases", ", ".join(e.aliases) or None),
    ]
    for key, value in rows:
        if value:
            print(f"  {key:<13s} {value}")


def _models(args: argparse.Namespace) -> int:
    from nonlocalnet.models import list_models, model_info

    print("\n".join(list_models("video")))
    try:
        import nonlocalnet.detection  # noqa: F401  (registers the detectors)
    except ImportError as err:  # the detection extra (torchvision) is not installed
        print(f"# detectors: not available ({err}); pip install 'nonlocalnet[detection]'")
        return 0
    print("# detectors (torchvision; nonlocalnet detect-train)")
    for name in list_models("detector"):
        print(f"{name:<34s} {model_info(name).description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nonlocalnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nonlocalnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_model_commands(sub)
    _add_tool_commands(sub)
    add_video_commands(sub)
    add_detection_commands(sub)
    return parser


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """``example``, ``info``, ``convert-caffe2``."""
    ex = sub.add_parser("example", help="build a non-local block and show what it does")
    ex.add_argument("--mode", choices=MODES, default="embedded_gaussian")
    ex.add_argument("--channels", type=int, default=64)
    ex.add_argument("--size", type=int, nargs="+", default=[8, 14, 14], help="T H W (or H W, or L): 3D/2D/1D")
    ex.add_argument("--batch", type=int, default=2)
    ex.add_argument("--pool-before-conv", action="store_true", help="released code's pooling")
    ex.add_argument(
        "--use-scale", "--scale", dest="use_scale", action="store_true", help="multiply logits by Ck ** -0.5"
    )
    ex.add_argument("--seed", type=int, default=0)
    ex.set_defaults(func=_example)

    info = sub.add_parser("info", help="parameters and GFLOPs of a registry model")
    info.add_argument("model")
    info.add_argument("--variant", choices=VARIANTS, default="paper")
    info.add_argument("--frames", type=int, default=None, help="default: the model's (32 or 8)")
    info.add_argument("--size", type=int, default=224)
    info.add_argument("--num-classes", type=int, default=400)
    info.set_defaults(func=_info)

    conv = sub.add_parser("convert-caffe2", help="convert the authors' .pkl weights to safetensors")
    conv.add_argument("input", help="released Caffe2 .pkl")
    conv.add_argument("output", help="output .safetensors")
    conv.add_argument(
        "--model", default=None, help="registry name, e.g. i3d_nl5_r50 (default: the released file's)"
    )
    conv.add_argument(
        "--norm",
        choices=BACKBONE_NORMS,
        default=None,
        help="affine: frozen BN, the *_32x4_* and *_128x1_* files (default: the released file's, "
        "else read from the file: no BN statistics means affine)",
    )
    conv.add_argument("--num-classes", type=int, default=400)
    conv.add_argument("--allow-partial", action="store_true", help="load what fits, report the rest")
    conv.set_defaults(func=_convert_caffe2)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """``denoise``, ``models``, ``weights``."""
    den = sub.add_parser("denoise", help="non-local means on an image (PNG/JPEG/...) or a video")
    den.add_argument("input")
    den.add_argument("-o", "--output", required=True)
    den.add_argument(
        "--sigma", type=float, default=None, help="noise std in [0, 1] units (default: estimated)"
    )
    den.add_argument("--h", type=float, default=None, help="filter strength (default: 0.8 sigma)")
    den.add_argument("--patch-size", type=int, default=7)
    den.add_argument("--search-window", type=int, default=21)
    den.add_argument("--temporal-window", type=int, default=3, help="frames searched, for videos")
    den.add_argument("--no-progress", action="store_true")
    den.set_defaults(func=_denoise)

    models = sub.add_parser("models", help="list the registry models")
    models.set_defaults(func=_models)

    we = sub.add_parser(
        "weights",
        help="the named weights: the authors' released models, ImageNet and COCO files; download them",
    )
    we.add_argument("names", nargs="*", help="weights names: show each in full (or download with --download)")
    we.add_argument("--model", default=None, help="list only the weights of this registry/detector model")
    we.add_argument("--download", action="store_true", help="download (and convert) NAMES into the cache")
    we.add_argument(
        "--cache-dir",
        default=None,
        help="weights cache (default: $NONLOCALNET_CACHE_DIR, else $TORCH_HOME/hub/checkpoints)",
    )
    we.add_argument("--no-progress", action="store_true")
    we.set_defaults(func=_weights)


def main(argv: Sequence[str] | None = None) -> int:
    import nonlocalnet.tasks  # noqa: F401  (registers the built-in tasks)

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_train(parser, argv) if argv[:1] in (["train"], ["detect-train"]) else parser.parse_args(argv)
    if args.command == "example" and not 1 <= len(args.size) <= 3:
        print(f"error: --size takes 1 to 3 numbers, got {len(args.size)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (DataQualityError, DistributedError) as err:  # too much broken data, a dead peer
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except (NonLocalNetError, OSError) as err:  # the library's own errors; files the user named
        print(f"error: {err}", file=sys.stderr)
        return 2
    # anything else is a bug: its traceback shows


if __name__ == "__main__":
    sys.exit(main())
