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
    from nonlocalnet.detection.trained import (
        build_detector_from_config,
        detector_label_space,
        load_trained_detector,
    )
    from nonlocalnet.engine import init_distributed, load_config
    from nonlocalnet.models import model_info

    _setup_logging()
    if args.checkpoint:  # the overrides apply to the model too (its transform, its heads)
        trained = load_trained_detector(args.checkpoint, overrides=args.overrides)
        cfg, model = trained.config, trained.model
        for change in trained.changes:
            print(f"override changes the model: {change}")
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
    masks = model_info(
        det.model, "detector"
    ).has_masks  # as in training: a mask model's instances need a mask
    dataset = CocoDetection(det.val_images, det.val_annotations, train=False, masks=masks)
    if model is None:
        data = str(det.val_annotations)
        space = detector_label_space(det, dataset.category_ids, data=data, evaluating=True)
        keypoints = len(dataset.keypoint_names) or None
        model, report = build_detector_from_config(det, space.num_classes, keypoints)
        print(report)
    else:
        trained.check_categories(dataset.category_ids, f"{det.val_annotations} ({args.checkpoint})")
        space = trained.label_space
    dataset.set_labels(space.kind)
    print(space.summary())
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
    if space.kind == "category_ids":
        counts = ", ".join(f"label {label}: {n}" for label, n in result.dropped.items())
        print(
            f"{sum(result.dropped.values())} detections of labels without a category in "
            f"{det.val_annotations} left out of the evaluation" + (f" ({counts})" if counts else "")
        )
    print(
        f"{result.images} images, {len(result.bad)} unreadable"
        + "".join(f"\n  BAD {b.path}: {b.reason}" for b in result.bad)
    )
    (out / "data_report.json").write_text(json.dumps(dataset.data_report(), indent=2) + "\n")
    print(f"{len(dataset.dropped_annotations)} unusable annotations dropped (see {out / 'data_report.json'})")
    print(f"wrote {out / 'detections.json'} (COCO results) and {out / 'stats.json'}")
    return 0


def _detect_predict(args: argparse.Namespace) -> int:
    _require_extra()
    from nonlocalnet.detection.predict import FailedImage, choose_device, find_images, predict_path
    from nonlocalnet.detection.trained import load_trained_detector

    if not 0.0 <= args.score_threshold <= 1.0:
        raise InvalidValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    device = choose_device(args.device)
    folder = Path(args.source).is_dir()
    find_images(args.source)  # a missing path or an empty folder fails before the model loads
    trained = load_trained_detector(args.checkpoint, device)

    def show(item) -> None:
        if isinstance(item, FailedImage):
            print(f"FAILED {item.path}: {item.reason}")
            return
        print(f"{item.path}: {len(item.detections)} detections with score >= {args.score_threshold}")
        for row in item.detections if not folder else ():
            print(f"  {row['label']:<20s} {row['score']:.3f}  box {row['box_xyxy']}")

    report = predict_path(
        trained,
        args.source,
        output=args.output,
        json_path=args.json,
        score_threshold=args.score_threshold,
        on_image=show,
    )
    drawn = [r.drawing for r in report.images]
    if drawn and not folder:
        print(f"wrote {drawn[0]}")
    elif drawn:
        print(f"wrote {len(drawn)} drawings to {drawn[0].parent}")
    if report.json_path is not None:
        print(f"wrote {report.json_path}")
    if folder:
        print(
            f"{len(report.images) + len(report.failed)} images on {device}: {len(report.images)} predicted, "
            f"{len(report.failed)} failed"
            + "".join(f"\n  FAILED {f.path}: {f.reason}" for f in report.failed)
        )
    return 1 if report.failed else 0


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

    pr = sub.add_parser(
        "detect-predict", help="detect in an image or a folder of images; draw boxes, masks, keypoints"
    )
    pr.add_argument(
        "source",
        metavar="IMAGE_OR_FOLDER",
        help="an image file, or a folder: its .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp files (any case), "
        "sorted; read upright by their EXIF orientation",
    )
    pr.add_argument("--checkpoint", required=True, help="a detection training checkpoint (.pt)")
    pr.add_argument(
        "--output",
        default=None,
        help="an image: the drawn PNG (default IMAGE.detections.png); a folder: the folder for "
        "NAME.png per image and detections.json (default FOLDER.detections)",
    )
    pr.add_argument("--score-threshold", type=float, default=0.5)
    pr.add_argument(
        "--json",
        default=None,
        help="write the detections (boxes, masks as COCO RLE, keypoints and their scores) as JSON "
        "here (a folder's default: OUTPUT/detections.json)",
    )
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA if present)")
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
