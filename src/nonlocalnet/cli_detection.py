"""``nonlocalnet detect-train | detect-eval | detect-predict | detect-demo``: thin layers over
``nonlocalnet.detection``, the engine and the detection demo (the ``detection`` extra)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nonlocalnet.cli_video import _setup_logging, add_demo_run_arguments
from nonlocalnet.errors import InvalidValueError, MissingDependencyError

__all__ = ["add_detection_commands", "format_stats"]


def format_stats(stats: dict[str, dict[str, float]]) -> str:
    """COCOeval's summaries, one line per IoU type: ``bbox  AP 38.0  AP50 59.6 ...``."""
    lines = []
    for iou_type, values in stats.items():
        cells = "  ".join(f"{name} {value:.1f}" for name, value in values.items())
        lines.append(f"{iou_type:<9s} {cells}")
    return "\n".join(lines)


def _require_extra() -> None:
    """The detection commands need torchvision and pycocotools: say so in one line if missing."""
    try:
        import pycocotools  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"the detection commands need torchvision and pycocotools ({err}); "
            "pip install 'nonlocalnet[detection]'"
        ) from None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports


def _detect_train(args: argparse.Namespace) -> int:
    _require_extra()
    from nonlocalnet.engine import load_config, train

    _setup_logging()
    cfg = load_config(args.config, args.overrides)
    if cfg.task != "detection":
        raise InvalidValueError(
            f"{args.config} is a {cfg.task!r} config; detect-train takes a detection config "
            "(task: detection, e.g. configs/detection/maskrcnn_r50_fpn_nl.yaml)"
        )
    result = train(cfg, resume=True if args.resume == "latest" else args.resume)
    if not _is_main():
        return 0
    if result.final_eval is not None:
        e = result.final_eval
        shown = {k: v for k, v in e.items() if k.endswith(("_AP", "_AP50", "_AP75"))}
        print("final validation: " + ", ".join(f"{k} {v:.1f}" for k, v in shown.items()))
    print(
        f"broken images skipped: {result.bad_data['count']} (listed in {result.output_dir / 'summary.json'})"
    )
    print(f"wrote {result.output_dir}")
    return 0


def _detect_eval(args: argparse.Namespace) -> int:
    _require_extra()
    from nonlocalnet.detection.coco import CocoDetection
    from nonlocalnet.detection.evaluate import evaluate_detector, write_coco_results
    from nonlocalnet.detection.trained import build_detector_from_config, load_trained_detector
    from nonlocalnet.engine import init_distributed, load_config
    from nonlocalnet.engine.config import apply_overrides, config_from_dict, config_to_dict

    _setup_logging()
    if args.checkpoint:
        trained = load_trained_detector(args.checkpoint)
        cfg = config_from_dict(apply_overrides(config_to_dict(trained.config), args.overrides))
        model = trained.model
    elif args.config:
        cfg = load_config(args.config, args.overrides)
        if not cfg.detection.weights:
            raise InvalidValueError(
                "detect-eval --config needs detection.weights=FILE (or give --checkpoint)"
            )
        model = None
    else:
        raise InvalidValueError("give --checkpoint CKPT (a detection training checkpoint) or --config CFG")
    det = cfg.detection
    if not det.val_images or not det.val_annotations:
        raise InvalidValueError(
            "detection.val_images and detection.val_annotations name the images to evaluate"
        )
    dataset = CocoDetection(det.val_images, det.val_annotations, train=False)
    if args.checkpoint and trained.category_ids and list(dataset.category_ids) != list(trained.category_ids):
        raise InvalidValueError(
            f"{det.val_annotations} has the categories {list(dataset.category_ids)} but "
            f"{args.checkpoint} was trained on the categories {list(trained.category_ids)}"
        )
    if model is None:
        keypoints = len(dataset.keypoint_names) or None
        model, report = build_detector_from_config(
            det, det.num_classes or len(dataset.class_names) + 1, keypoints
        )
        print(report)
    ctx = init_distributed(cfg.device, cfg.train.dist_timeout_s)
    model.to(ctx.device)
    result = evaluate_detector(
        model,
        dataset,
        device=ctx.device,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        ctx=ctx,
        oks_sigmas=det.oks_sigmas,
        mask_threshold=det.mask_threshold,
        progress=_is_main() and not args.no_progress,
    )
    ctx.shutdown()
    if not _is_main():
        return 0
    out = Path(args.output or Path(cfg.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    write_coco_results(out / "detections.json", result.results)
    (out / "stats.json").write_text(json.dumps({"images": result.images, **result.stats}, indent=2))
    print(format_stats(result.stats))
    print(
        f"{result.images} images, {len(result.bad)} unreadable"
        + "".join(f"\n  BAD {b.path}: {b.reason}" for b in result.bad)
    )
    print(f"wrote {out / 'detections.json'} (COCO results) and {out / 'stats.json'}")
    return 0


def _detect_predict(args: argparse.Namespace) -> int:
    _require_extra()
    from nonlocalnet.detection.trained import load_trained_detector, predict_image, read_image
    from nonlocalnet.viz.detections import save_detections

    if not 0.0 <= args.score_threshold <= 1.0:
        raise InvalidValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    trained = load_trained_detector(args.checkpoint)
    image = read_image(args.image)
    pred = predict_image(trained.model, image)
    keep = pred["scores"] >= args.score_threshold
    names = ["background", *trained.class_names]
    print(f"{args.image}: {int(keep.sum())} detections with score >= {args.score_threshold}")
    rows = []
    for i in keep.nonzero().flatten().tolist():
        box = [round(v, 1) for v in pred["boxes"][i].tolist()]
        label = int(pred["labels"][i])
        rows.append(
            {
                "label": names[label],
                "category_id": trained.category_ids[label - 1],
                "score": float(pred["scores"][i]),
                "box_xyxy": box,
            }
        )
        if "keypoints" in pred:
            rows[-1]["keypoints"] = [[round(v, 1) for v in kp] for kp in pred["keypoints"][i].tolist()]
        print(f"  {names[label]:<20s} {float(pred['scores'][i]):.3f}  box {box}")
    output = Path(args.output or Path(args.image).with_suffix(".detections.png"))
    save_detections(
        output,
        image,
        pred,
        class_names=names,
        score_threshold=args.score_threshold,
        keypoint_names=trained.keypoint_names or None,
        mask_threshold=trained.config.detection.mask_threshold,
    )
    print(f"wrote {output}")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": str(args.image), "detections": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _detect_demo(args: argparse.Namespace) -> int:
    _require_extra()
    from nonlocalnet.demo.detection_run import run_detection_demo

    _setup_logging()
    result = run_detection_demo(
        args.output,
        quick=args.quick,
        seeds=args.seeds,
        data_dir=args.data_dir,
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    print(result.table)
    print(f"wrote {result.output_dir} in {result.seconds:.0f} s")
    return 0


def add_detection_commands(sub: argparse._SubParsersAction) -> None:
    """Register the detection commands on the ``nonlocalnet`` parser."""
    tr = sub.add_parser(
        "detect-train", help="train a detector (task: detection config; torchrun for many processes)"
    )
    tr.add_argument("--config", required=True, help="e.g. configs/detection/maskrcnn_r50_fpn_nl.yaml")
    tr.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from a checkpoint (default: the newest in output_dir/checkpoints)",
    )
    tr.add_argument("overrides", nargs="*", help="section.key=value, e.g. detection.train_images=DIR")
    tr.set_defaults(func=_detect_train)

    ev = sub.add_parser("detect-eval", help="COCO box / mask / keypoint AP (pycocotools' COCOeval)")
    ev.add_argument("--checkpoint", default=None, help="a detection training checkpoint (.pt)")
    ev.add_argument("--config", default=None, help="or a detection config with detection.weights=FILE")
    ev.add_argument("--output", default=None, help="default: <output_dir>/eval")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("overrides", nargs="*", help="section.key=value, e.g. detection.val_images=DIR")
    ev.set_defaults(func=_detect_eval)

    pr = sub.add_parser("detect-predict", help="detect in one image; draw boxes, masks, keypoints")
    pr.add_argument("image")
    pr.add_argument("--checkpoint", required=True, help="a detection training checkpoint (.pt)")
    pr.add_argument("--output", default=None, help="the drawn image (default: IMAGE.detections.png)")
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument("--json", default=None, help="also write the detections as JSON")
    pr.set_defaults(func=_detect_predict)

    de = sub.add_parser(
        "detect-demo", help="the built-in detection task: Mask R-CNN with and without a non-local block"
    )
    de.add_argument(
        "--quick",
        action="store_true",
        help="Mask R-CNN only, seed 0, 150 held-out images: the full run's seed-0 training (CI)",
    )
    de.add_argument("--output", default="runs/detect-demo")
    add_demo_run_arguments(de, "images")
    de.set_defaults(func=_detect_demo)
