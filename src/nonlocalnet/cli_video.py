"""``nonlocalnet train | eval | predict | check-data | demo``: thin layers over the engine and data."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from nonlocalnet.errors import InvalidValueError

if TYPE_CHECKING:
    from nonlocalnet.data import VideoList

__all__ = ["add_demo_run_arguments", "add_video_commands", "parse_train", "split_resume"]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def split_resume(argv: list[str]) -> list[str]:
    """``train ... --resume a.b=1 ...``: give ``--resume`` its default (``--resume=latest``) when the
    word after it is an override, not an existing file, so that argparse keeps that word, and the
    overrides on either side of ``--resume``, in their command-line order (a later one wins)."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        after = out[i + 1]
        if word == "--resume" and _OVERRIDE.match(after) and not Path(after).exists():
            out[i] = "--resume=latest"
    return out


def parse_train(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``train ...``: overrides may stand on both sides of ``--resume``. argparse gives the
    words after it to no one (there is one positional list), so they are taken back here, in
    their order; ``args.resume`` is ``None``, ``"latest"`` or a checkpoint path."""
    args, extra = parser.parse_known_args(split_resume(argv))
    if any(word.startswith("-") for word in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    return args


def _train(args: argparse.Namespace) -> int:
    from nonlocalnet.engine import train
    from nonlocalnet.tasks import VideoConfig, load_config

    _setup_logging()
    resume = True if args.resume == "latest" else args.resume
    cfg = load_config(args.config, args.overrides)
    if not isinstance(cfg, VideoConfig):
        raise InvalidValueError(
            f"{args.config} is a {cfg.task!r} config; train takes video classification configs "
            "(detection configs: nonlocalnet detect-train)"
        )
    result = train(cfg, resume=resume, extend=args.extend)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 writes, so only rank 0 reports
    if result.final_eval is not None:
        e = result.final_eval
        print(
            f"final validation: clip top-1 {100 * e['clip_top1']:.2f}% (1 view), video top-1 "
            f"{100 * e['video_top1']:.2f}% ({e['views_per_video']} views)"
        )
    bad = result.bad_data
    print(f"broken videos skipped: {bad['count']} (listed in {result.output_dir / 'summary.json'})")
    print(f"wrote {result.output_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nonlocalnet.models import read_model_file
    from nonlocalnet.tasks import VideoConfig, load_config
    from nonlocalnet.tasks.video import config_weights, inference_config, run_evaluation

    _setup_logging()
    if args.config and args.model:
        raise InvalidValueError("give --config or --model, not both")
    if args.config:  # the weights are read by run_evaluation
        cfg = load_config(args.config, args.overrides)
        if not isinstance(cfg, VideoConfig):
            raise InvalidValueError(
                f"{args.config} is a {cfg.task!r} config; eval takes video classification configs "
                "(detection configs: nonlocalnet detect-eval)"
            )
        weights = args.checkpoint or config_weights(cfg)
    elif not args.checkpoint:
        raise InvalidValueError("give --checkpoint (a weights file or name), or --config CFG")
    else:
        weights = read_model_file(args.checkpoint)
        cfg = inference_config(weights, model=args.model, overrides=args.overrides)
    result = run_evaluation(cfg, weights, output_dir=args.output, save_scores=args.save_scores)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 writes, so only rank 0 reports
    print(result.summary())
    print(f"wrote {args.output or Path(cfg.output_dir) / 'eval'}")
    if args.save_scores:
        print(f"per-video scores written to {args.save_scores}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from nonlocalnet.tasks.video import load_trained_model, predict_video

    model, cfg, names = load_trained_model(
        args.checkpoint,
        config=args.config,
        model=args.model,
        class_names=args.class_names,
    )
    if args.clips is not None:  # 0 too: an error below, not the config's value
        cfg.data.num_clips = args.clips
    if args.crops is not None:
        cfg.data.num_crops = args.crops
    pred = predict_video(model, args.video, cfg, names, topk=args.topk, features=args.features is not None)
    print(f"{pred.path} ({pred.views} views averaged)")
    for rank, (name, score) in enumerate(pred.top, start=1):
        print(f"  {rank}. {name:<30s} {score:.4f}")
    if args.features is not None and pred.features is not None:
        np.save(args.features, pred.features.numpy())
        print(f"pooled features {tuple(pred.features.shape)} written to {args.features}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"path": pred.path, "views": pred.views, "top": pred.top}, indent=2)
        )
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from nonlocalnet.data import check_dataset, read_class_names, read_video_list, scan_class_folders

    if bool(args.list) == bool(args.folder):
        raise InvalidValueError("give exactly one of --list FILE and --folder DIR")
    if args.folder:
        listed = scan_class_folders(args.folder)
    else:
        names = read_class_names(args.class_names) if args.class_names else None
        listed = read_video_list(args.list, root=args.root, class_names=names)
    missing = {m.index for m in listed.missing}
    samples = [s for i, s in enumerate(listed.samples) if i not in missing]
    _print_unlisted(listed)
    report = check_dataset(
        samples, decode=args.decode, num_workers=args.workers, progress=not args.no_progress
    )
    for bad in report.bad:
        print(f"BAD {bad.path}: {bad.reason}")
    for note in report.corrected:
        print(f"COUNT {note.path}: {note.detail}")
    for note in report.slow:
        print(f"SLOW {note.path}: {note.detail} (every read decodes from the start)")
    for note in report.rotated:
        print(f"ROTATED {note.path}: {note.detail}")
    for note in report.anamorphic:
        print(f"ASPECT {note.path}: {note.detail}")
    if report.rotated or report.anamorphic:
        print(
            f"display orientation: {len(report.rotated)} rotated by a display matrix, "
            f"{len(report.anamorphic)} with non-square pixels (docs/training.md, Decoding)"
        )
    print(
        f"checked {report.total} videos in {report.seconds:.1f} s: {len(report.bad)} bad, "
        f"{len(report.corrected)} with a corrected frame count, {len(report.slow)} slow to read"
    )
    print(
        f"read {len(listed.samples)} videos ({listed.format}): {len(listed.missing)} listed videos not "
        f"found, {len(listed.skipped)} files skipped (not videos)"
    )
    if args.json:
        missed = [{"where": m.where, "looked_for": m.looked_for} for m in listed.missing]
        skipped = [{"path": f.path, "reason": f.reason} for f in listed.skipped]
        Path(args.json).write_text(
            json.dumps({**report.to_dict(), "missing": missed, "skipped": skipped}, indent=2)
        )
    return 0 if report.ok and not listed.missing else 1


def _print_unlisted(listed: VideoList, limit: int = 50) -> None:
    """The files a folder scan skipped and the listed videos not found (``limit`` of each)."""
    for what, notes in (
        ("SKIPPED", [f"{f.path}: {f.reason}" for f in listed.skipped]),
        ("MISSING", [f"{m.where}: no {m.looked_for}" for m in listed.missing]),
    ):
        for note in notes[:limit]:
            print(f"{what} {note}")
        if len(notes) > limit:
            print(f"{what} ... and {len(notes) - limit} more (--json lists them all)")


def _demo(args: argparse.Namespace) -> int:
    from nonlocalnet.demo import run_demo

    _setup_logging()
    if args.ablation and args.quick:
        raise InvalidValueError("--ablation runs the full recipe; it cannot be combined with --quick")
    output = args.output or ("runs/demo" if not args.ablation else f"runs/demo-{args.ablation}")
    result = run_demo(
        output,
        quick=args.quick,
        seeds=args.seeds,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        jobs=args.jobs,
        ablation=args.ablation,
        task=args.task,
        recipe=args.recipe,
    )
    print(result.table)
    a = result.attention
    if a is not None:
        print(
            f"attention: the late object's query looks at the early object in {100 * a['hit_rate']:.0f}% "
            f"of {a['videos']} held-out videos (chance {100 * a['chance']:.0f}%)"
        )
    print(f"wrote {result.output_dir} in {result.seconds:.0f} s")
    return 0


def add_demo_run_arguments(parser: argparse.ArgumentParser, samples: str) -> None:
    """The options every built-in demo takes: ``--seeds``, ``--data-dir`` (where its generated
    ``samples`` are cached), ``--jobs``, ``--no-progress``, ``--recipe``."""
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 (1 with --quick)")
    parser.add_argument(
        "--data-dir", default=None, help=f"where the generated {samples} are cached (default: OUTPUT/data)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="training processes side by side (default: CPU cores, at most 4)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--recipe",
        default=None,
        help="a recipe file (a training config with a demo: section; see nonlocalnet/demo/recipes/) "
        "or a built-in recipe's name, instead of the built-in one",
    )


def add_video_commands(sub: argparse._SubParsersAction) -> None:
    """Register the video training/evaluation commands on the ``nonlocalnet`` parser."""
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_demo(sub)
    _add_check_data(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train a video model from a YAML config (torchrun for many processes)")
    tr.add_argument("--config", required=True, help="YAML config, e.g. configs/c2d_nl5_r50.yaml")
    tr.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from a checkpoint (default: the newest in output_dir/checkpoints); "
        "may stand before or after the overrides",
    )
    tr.add_argument(
        "--extend",
        action="store_true",
        help="with --resume: let train.epochs/train.iterations grow (train longer than the checkpoint's "
        "run); the lr milestones keep their steps, the added steps continue at the last lr",
    )
    tr.add_argument("overrides", nargs="*", help="section.key=value (YAML values), e.g. train.batch_size=4")
    tr.set_defaults(func=_train)


def _add_config_and_model(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--model``: where eval and predict find the model for the weights."""
    parser.add_argument(
        "--config",
        default=None,
        help="default: the checkpoint's config, or the config.yaml of the run folder the weights lie in",
    )
    parser.add_argument(
        "--model", default=None, help="registry name, for converted weights (convert-caffe2; no config)"
    )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="clip and video accuracy, per class, confusion matrix")
    ev.add_argument(
        "--checkpoint",
        default=None,
        help="training checkpoint (.pt), a run's model.safetensors, converted weights (with --model) "
        "or a weights name; with --config, default: the weights its model.init names",
    )
    _add_config_and_model(ev)
    ev.add_argument("--output", default=None, help="default: <output_dir>/eval")
    ev.add_argument(
        "--save-scores",
        default=None,
        metavar="FILE.csv|FILE.npz",
        help="also write every video's scores: softmax averaged over its views, prediction, top-5, views",
    )
    ev.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.num_clips=10")
    ev.set_defaults(func=_eval)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="top-5 labels (and pooled features) for one video")
    pr.add_argument("video")
    pr.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint (.pt), a run's model.safetensors, or converted weights (with --model)",
    )
    _add_config_and_model(pr)
    pr.add_argument(
        "--class-names",
        default=None,
        help="class names, one per line (default: the checkpoint's, the run's classes.txt, data.class_names)",
    )
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--clips", type=int, default=None, help="clips in time (default: the config's)")
    pr.add_argument("--crops", type=int, default=None, help="spatial crops (default: the config's)")
    pr.add_argument("--features", default=None, metavar="OUT.npy", help="write the pooled features")
    pr.add_argument("--json", default=None, help="also write the prediction as JSON")
    pr.set_defaults(func=_predict)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    de = sub.add_parser(
        "demo", help="the built-in long-range video task: C2D/I3D with and without non-local blocks"
    )
    de.add_argument(
        "--quick",
        action="store_true",
        help="four models (C2D, I3D, each with and without an embedded-Gaussian block), one seed, less "
        "data (under 3 minutes)",
    )
    de.add_argument("--output", default=None, help="default: runs/demo (runs/demo-ABLATION)")
    de.add_argument(
        "--ablation",
        choices=("stage", "blocks", "spacetime"),
        default=None,
        help="the paper's Table 2b/2c/2d at this scale: one block after res2/res3/res4; 1, 2 or 3 "
        "blocks; attention over space only, time only or space-time",
    )
    de.add_argument(
        "--task",
        choices=("v4", "v3"),
        default="v4",
        help="v4: 6-frame clips, the cues on the first and last frame (beyond the I3D's receptive "
        "field); v3: the earlier 4-frame task the I3D solves alone (default: v4)",
    )
    add_demo_run_arguments(de, "videos")
    de.set_defaults(func=_demo)


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    ck = sub.add_parser(
        "check-data",
        help="scan a dataset: unreadable videos, wrong header frame counts, videos slow to read",
    )
    ck.add_argument(
        "--list", default=None, help="list file (path label lines, raw-frame lines, CSV, a Kinetics CSV)"
    )
    ck.add_argument("--root", default=None, help="base folder of relative paths in the list")
    ck.add_argument("--class-names", default=None, help="class names file, for name labels")
    ck.add_argument("--folder", default=None, help="class-per-folder tree instead of a list")
    ck.add_argument("--decode", action="store_true", help="also decode the first and last frames")
    ck.add_argument("--workers", type=int, default=0)
    ck.add_argument("--json", default=None, help="write the report as JSON")
    ck.add_argument("--no-progress", action="store_true")
    ck.set_defaults(func=_check_data)
