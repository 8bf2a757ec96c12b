"""Benchmark the detectors with and without the non-local block: time per image and peak memory
of inference and of one training step at 800x1333 (R50-FPN), and the block's share of the FLOPs
(the paper: under 5%). Each case runs in its own process; random weights, nothing downloads.

    python benchmarks/detection.py        # maskrcnn_r50_fpn vs maskrcnn_r50_fpn_nl, 800x1333
    python benchmarks/detection.py --models keypointrcnn_r50_fpn_nlhead     # its baseline is added
    python benchmarks/detection.py --models maskrcnn_tiny_fpn_nl --size 64 96 --repeats 1 --warmup 0

One image of exactly ``--size H W`` per step (batch 1; the transform's ``min_size=H``,
``max_size=W`` keep it, then pads to a multiple of 32). Inference: ``model.eval()`` forward under
``no_grad``, with ``box_score_thresh`` 0 (``--score-thresh``) so that random weights still yield
``detections_per_img`` (100) detections and the mask / keypoint head runs on them, as for a trained
model on a busy image (at the default 0.05 an untrained 91-class head keeps none). Training:
``model.train()`` forward on a synthetic target (a few boxes, masks and, for keypoint models,
keypoints), backward, SGD step. The detectors are built as for fine-tuning from an ImageNet
backbone (the paper's setting), with a file of random body weights in its place: FrozenBatchNorm2d
in the backbone, its last ``--trainable-backbone-layers`` stages trained (default 3, torchvision's:
conv1 and layer1 frozen; ``--trainable-backbone-layers -1``: no backbone file, so BatchNorm2d and
every layer trained, torchvision's setting without weights). Times are
medians per image. The RoIs
column: what the box head took (at inference the RPN's proposals after its NMS, up to 1000, which
with random weights varies by model and at small sizes; in training the 512 sampled).

GMACs (multiply-adds / 1e9, the paper's "FLOPs") are counted with torch's FlopCounterMode on one
inference forward of the whole detector on the CPU at the real size: the meta device cannot run a
detector (the RPN's and the box post-processing's data-dependent ``torch.nonzero`` has no meta
kernel). The non-local blocks' GMACs are their own entries in the counter's per-module counts (and
cross-checked by running each block alone on the inputs it received, recorded with a hook); their
share is of the whole model and of the backbone + FPN.

Writes JSON (``--out``, default ``benchmarks/results/detection.json``) and prints Markdown tables
with the checks: time, memory and GMACs of each non-local model relative to its baseline, measured
in the same run, and the blocks' share of the GMACs against the paper's 5%.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _harness import machine, measure, spawn, write_json
from torch.utils.flop_counter import FlopCounterMode

DEFAULT_MODELS = ("maskrcnn_r50_fpn", "maskrcnn_r50_fpn_nl")
NUM_CLASSES = 91  # COCO's 90 ids + background, as torchvision's COCO detectors
NUM_KEYPOINT_CLASSES = 2  # COCO person keypoints: person + background
NUM_KEYPOINTS = 17
NUM_BOXES = 5  # objects in the synthetic training target
PAPER_SHARE = 0.05
COUNTED = (
    "one inference forward of the whole detector (transform, backbone + FPN, RPN, RoI heads on "
    "the detections) on the CPU at the real size, random weights"
)


def baseline_of(name: str) -> str:
    """The detector without non-local blocks: ``maskrcnn_r50_fpn_nl`` -> ``maskrcnn_r50_fpn``."""
    return re.sub(r"(_nl(head)?)+$", "", name)


def _build(case: dict) -> tuple[torch.nn.Module, bool, bool]:
    """The case's detector, whether it predicts keypoints and masks. Random weights, but built as
    when fine-tuning from an ImageNet backbone (the paper's setting): a state-dict file of a
    randomly initialised body stands in for ``weights_backbone``, so the backbone's BN is
    ``FrozenBatchNorm2d`` and ``trainable_backbone_layers`` holds (without any weights torchvision,
    and ``build_detector``, train every layer with batch-statistics BN)."""
    import tempfile

    from nonlocalnet.detection.backbones import build_body
    from nonlocalnet.detection.models import build_detector
    from nonlocalnet.models import model_info

    info = model_info(case["model"], "detector")
    keypoints = info.has_keypoints
    extra: dict = {"num_keypoints": NUM_KEYPOINTS} if keypoints else {}
    h, w = case["size"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if case.get("trainable_backbone_layers") is not None:
            path = Path(tmp) / "random_body.pth"
            torch.save(build_body(info.backbone, torch.nn.BatchNorm2d).state_dict(), path)
            extra |= {
                "weights_backbone": path,
                "trainable_backbone_layers": case["trainable_backbone_layers"],
            }
        torch.manual_seed(0)
        model = build_detector(
            case["model"],
            num_classes=NUM_KEYPOINT_CLASSES if keypoints else NUM_CLASSES,
            min_size=min(h, w),
            max_size=max(h, w),
            box_score_thresh=case["score_thresh"],
            **extra,
        )
    return model, keypoints, info.has_masks


def synthetic_target(
    h: int, w: int, num_classes: int, masks: bool, keypoints: bool, n: int = NUM_BOXES, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``n`` boxes of 15-40% of the image side with a label each, and an ellipse mask inside
    every box and/or 17 visible keypoints inside it."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([w, h], dtype=torch.float32)
    extent = (0.15 + 0.25 * torch.rand(n, 2, generator=gen)) * size
    corner = torch.rand(n, 2, generator=gen) * (size - extent)
    boxes = torch.cat([corner, corner + extent], dim=1)
    target = {"boxes": boxes, "labels": torch.randint(1, num_classes, (n,), generator=gen)}
    if masks:
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, extent / 2
        dx = (xx[None] - centre[:, 0, None, None]) / half[:, 0, None, None]
        dy = (yy[None] - centre[:, 1, None, None]) / half[:, 1, None, None]
        target["masks"] = (dx**2 + dy**2 <= 1).to(torch.uint8)
    if keypoints:
        xy = corner[:, None] + torch.rand(n, NUM_KEYPOINTS, 2, generator=gen) * extent[:, None]
        target["keypoints"] = torch.cat([xy, torch.full((n, NUM_KEYPOINTS, 1), 2.0)], dim=2)
    return target


def _count_rois(model: torch.nn.Module, record: dict) -> None:
    """Record in ``record["rois"]`` how many RoIs the box head took in the last forward (the RPN's
    proposals at inference: with random weights its NMS keeps a number that varies by model)."""
    head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    if head is not None:
        head.register_forward_pre_hook(lambda _m, args: record.__setitem__("rois", int(args[0].shape[0])))


def _time_case(case: dict) -> dict:
    model, keypoints, masks = _build(case)
    h, w = case["size"]
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    num_classes = NUM_KEYPOINT_CLASSES if keypoints else NUM_CLASSES
    norm = type(getattr(model.backbone.body, "bn1", None)).__name__
    record: dict = {"num_classes": num_classes, "backbone_norm": norm}
    _count_rois(model, record)
    if case["train"]:
        model.train()
        target = synthetic_target(h, w, num_classes, masks, keypoints)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        record["trainable_params_m"] = sum(p.numel() for p in params) / 1e6

        def fn():
            opt.zero_grad(set_to_none=True)
            losses = model([image], [target])
            loss = sum(losses.values())
            loss.backward()
            loss = loss.detach()
            opt.step()
            record.setdefault("losses", []).append(loss.item())

    else:
        model.eval()

        def fn():
            with torch.no_grad():
                out = model([image])
            record["detections"] = len(out[0]["boxes"])

    result = measure(fn, case["warmup"], case["repeats"])
    return {**case, **result, **record, "images_per_s": 1.0 / result["median_s"]}


def _gmacs(counts: dict, key: str) -> float:
    return sum(counts.get(key, {}).values()) / 2e9


def _flops_case(case: dict) -> dict:
    from nonlocalnet.detection.models import nonlocal_blocks

    model, _, _ = _build(case)
    model.eval()
    blocks = nonlocal_blocks(model)
    inputs: dict[str, list[list[int]]] = {q: [] for q in blocks}
    hooks = [
        b.register_forward_pre_hook(lambda _m, args, q=q: inputs[q].append(list(args[0].shape)))
        for q, b in blocks.items()
    ]
    h, w = case["size"]
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    record: dict = {}
    _count_rois(model, record)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = model([image])
    finally:
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    depth = lambda key: key.count(".") - root.count(".")  # noqa: E731
    parts = {
        key.removeprefix(f"{root}."): _gmacs(counts, key)
        for key in counts
        if key.startswith(f"{root}.") and depth(key) <= 2
    }
    block_rows = []
    for q, block in blocks.items():
        alone = 0.0
        for shape in inputs[q]:
            with FlopCounterMode(display=False) as single, torch.no_grad():
                block(torch.zeros(shape))
            alone += single.get_total_flops() / 2e9
        key = f"{root}.{q}"
        block_rows.append(
            {
                "name": q,
                "calls": len(inputs[q]),
                "input_shapes": inputs[q],
                "gmacs": _gmacs(counts, key) if key in counts else alone,
                "gmacs_from": "per-module count" if key in counts else "block alone on its inputs",
                "alone_gmacs": alone,
                "params_m": sum(p.numel() for p in block.parameters()) / 1e6,
            }
        )
    total = counter.get_total_flops() / 2e9
    backbone = parts.get("backbone", 0.0)
    nl = sum(b["gmacs"] for b in block_rows)
    return {
        **case,
        "counted": COUNTED,
        "detections": len(out[0]["boxes"]),
        **record,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": total,
        "parts_gmacs": parts,
        "backbone_fpn_gmacs": backbone,
        "blocks": block_rows,
        "nonlocal_gmacs": nl,
        "share_of_model": nl / total if total else 0.0,
        "share_of_backbone_fpn": nl / backbone if backbone else 0.0,
    }


def run_case(case: dict) -> dict:
    """One case in this process: ``kind`` ``time`` (a pass, timed) or ``flops`` (counted)."""
    return _flops_case(case) if case["kind"] == "flops" else _time_case(case)


def with_baselines(models: Sequence[str], known: Sequence[str]) -> list[str]:
    """``models`` with each non-local model's baseline put before it, if missing and known."""
    out: list[str] = []
    for m in models:
        base = baseline_of(m)
        if base != m and base in known and base not in out and base not in models:
            out.append(base)
        if m not in out:
            out.append(m)
    return out


def plan(
    models: Sequence[str],
    size: tuple[int, int],
    passes: Sequence[str] = ("infer", "train"),
    warmup: int = 1,
    repeats: int = 3,
    score_thresh: float = 0.0,
    trainable_backbone_layers: int | None = 3,
) -> tuple[list[dict], list[dict]]:
    """The timed cases (pass by pass, model by model) and the FLOP-count cases (one a model)."""
    common = {
        "size": list(size),
        "score_thresh": score_thresh,
        "trainable_backbone_layers": trainable_backbone_layers,
    }
    timed = [
        {"kind": "time", "model": m, **common, "train": p == "train", "warmup": warmup, "repeats": repeats}
        for p in passes
        for m in models
    ]
    counted = [{"kind": "flops", "model": m, **common} for m in models]
    return timed, counted


def _pass(r: dict) -> str:
    return ("train" if r["train"] else "infer") + (f" ({r['tag']})" if r.get("tag") else "")


def _rois(r: dict) -> str:
    """The box head's RoIs and, at inference, the detections: ``1000 / 100``."""
    return f"{r.get('rois', '-')}" + (f" / {r['detections']}" if "detections" in r else "")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def summarise(results: list[dict], flops: list[dict]) -> tuple[str, dict]:
    """Markdown: the timed passes, the GMACs, then the checks (non-local model against its
    baseline of the same run; the blocks' share against the paper's 5%)."""
    ok = lambda r: "error" not in r  # noqa: E731
    find = lambda rows, **kw: next(  # noqa: E731
        (r for r in rows if ok(r) and all(r.get(k) == v for k, v in kw.items())), None
    )
    table = [
        "| model | input | pass | RoIs / detections | s / image | images / s | peak extra MiB "
        "| time vs baseline | memory vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    checks: dict = {"ratios": [], "share": []}
    for r in results:
        h, w = r["size"]
        if not ok(r):
            table.append(f"| {r['model']} | {h}x{w} | {_pass(r)} ({r['error']}) | - | - | - | - | - | - |")
            continue
        base_name = baseline_of(r["model"])
        base = (
            find(results, model=base_name, train=r["train"], size=r["size"])
            if base_name != r["model"]
            else None
        )
        vs_t = _ratio(r["median_s"], base["median_s"]) if base else "-"
        vs_m = _ratio(r["peak_extra_mib"], base["peak_extra_mib"]) if base else "-"
        table.append(
            f"| {r['model']} | {h}x{w} | {_pass(r)} | {_rois(r)} | {r['median_s']:.3f} "
            f"| {r['images_per_s']:.2f} | {r['peak_extra_mib']:.0f} | {vs_t} | {vs_m} |"
        )
        if base:
            checks["ratios"].append(
                {
                    "model": r["model"],
                    "baseline": base_name,
                    "train": r["train"],
                    "time_ratio": r["median_s"] / base["median_s"],
                    "memory_ratio": r["peak_extra_mib"] / base["peak_extra_mib"]
                    if base["peak_extra_mib"]
                    else None,
                }
            )
    lines = [
        "",
        "GMACs (multiply-adds / 1e9) of " + (flops[0].get("counted", COUNTED) if flops else COUNTED) + ":",
        "",
        "| model | input | RoIs / detections | params (M) | GMACs | backbone + FPN | non-local blocks "
        "| share of model | share of backbone + FPN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in flops:
        h, w = f["size"]
        if not ok(f):
            lines.append(f"| {f['model']} ({f['error']}) | {h}x{w} | - | - | - | - | - | - | - |")
            continue
        nl = f["nonlocal_gmacs"]
        shares = (
            (f"{100 * f['share_of_model']:.3g}%", f"{100 * f['share_of_backbone_fpn']:.3g}%")
            if f["blocks"]
            else ("-", "-")
        )
        lines.append(
            f"| {f['model']} | {h}x{w} | {_rois(f)} | {f['params_m']:.2f} | {f['gmacs']:.3g} "
            f"| {f['backbone_fpn_gmacs']:.3g} | {nl:.3g} | {shares[0]} | {shares[1]} |"
        )
    check_lines = []
    for c in checks["ratios"]:
        mem = f"{c['memory_ratio']:.2f}x" if c["memory_ratio"] is not None else "-"
        check_lines.append(
            f"- {c['model']} / {c['baseline']}, {'train' if c['train'] else 'infer'}: "
            f"time {c['time_ratio']:.2f}x, peak memory {mem}"
        )
    for f in flops:
        if not ok(f) or not f["blocks"]:
            continue
        base = find(flops, model=baseline_of(f["model"]), size=f["size"])
        met = f["share_of_model"] < PAPER_SHARE
        row = {
            "model": f["model"],
            "share_of_model": f["share_of_model"],
            "share_of_backbone_fpn": f["share_of_backbone_fpn"],
            "gmacs_ratio": f["gmacs"] / base["gmacs"] if base else None,
            "under_paper_5pct": met,
        }
        checks["share"].append(row)
        vs = f" (the model {row['gmacs_ratio']:.3f}x its baseline's GMACs)" if base else ""
        check_lines.append(
            f"- {f['model']}: non-local blocks {f['nonlocal_gmacs']:.3g} GMACs = "
            f"{100 * f['share_of_model']:.3g}% of the model{vs}, "
            f"{100 * f['share_of_backbone_fpn']:.3g}% of the backbone + FPN; "
            f"the paper's under 5% of the model: {'met' if met else 'NOT met'}"
        )
    check_lines = ["", "Checks:", *check_lines] if check_lines else []
    return "\n".join(table + lines + check_lines), checks


def _label(c: dict) -> str:
    h, w = c["size"]
    what = "GMACs" if c["kind"] == "flops" else ("train" if c["train"] else "infer")
    return f"{c['model']} {h}x{w} {what}"


def _done(r: dict) -> str:
    if "error" in r:
        return r["error"]
    if r["kind"] == "flops":
        return f"{r['gmacs']:.3g} GMACs, non-local {r['nonlocal_gmacs']:.3g}"
    return f"{r['median_s']:.3f} s / image, {r['peak_extra_mib']:.0f} MiB"


def main(argv: Sequence[str] | None = None, runner: Callable[[str, dict, float], dict] = spawn) -> dict:
    """Run the benchmark (``runner``: one case in a fresh process; the tests run them in theirs)."""
    import nonlocalnet.detection  # noqa: F401  (registers the detectors)
    from nonlocalnet.models import list_models

    known = list_models("detector")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=known)
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--passes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--score-thresh", type=float, default=0.0, help="box_score_thresh at inference")
    parser.add_argument(
        "--trainable-backbone-layers",
        type=int,
        default=3,
        help="as torchvision's with an ImageNet backbone (-1: no backbone weights, all trained, BatchNorm2d)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the GMAC counts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detection.json")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--tag", default="", help="a label for the rows (e.g. which code was measured)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return {}
    models = with_baselines(args.models, known)
    trainable = args.trainable_backbone_layers if args.trainable_backbone_layers >= 0 else None
    timed, counted = plan(
        models, tuple(args.size), args.passes, args.warmup, args.repeats, args.score_thresh, trainable
    )
    if args.tag:
        timed = [{**c, "tag": args.tag} for c in timed]
    cases = timed + ([] if args.no_flops else counted)
    done = []
    for i, case in enumerate(cases, 1):
        res = runner(__file__, case, args.timeout)
        done.append(res)
        print(f"[{i}/{len(cases)}] {_label(case)}: {_done(res)}", file=sys.stderr, flush=True)
    results, flops = done[: len(timed)], done[len(timed) :]
    table, checks = summarise(results, flops)
    print(table)
    import torchvision

    meta = {**machine(), "torchvision": torchvision.__version__, "batch": 1}
    payload = {"meta": meta, "flops": flops, "checks": checks, "cases": results}
    write_json(args.out, payload)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
