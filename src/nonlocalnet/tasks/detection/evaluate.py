"""``nonlocalnet detect-eval`` as a library call: COCO box / mask / keypoint AP of a trained
detector (a training checkpoint, or the weights a config names) on ``detection.val_*``, with the
files it writes (:func:`run_detection_evaluation`). Needs the ``detection`` extra."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.cocoeval import write_coco_results
from nonlocalnet.detection.evaluate import DetectionEvaluation, evaluate_detector
from nonlocalnet.detection.labels import LabelSpace
from nonlocalnet.engine.config import ConfigError, check_config
from nonlocalnet.engine.distributed import init_distributed
from nonlocalnet.models.registry import model_info
from nonlocalnet.tasks.detection.config import DetectionConfig, DetectionTaskConfig
from nonlocalnet.tasks.detection.setup import (
    build_detector_from_config,
    detector_label_space,
    load_trained_detector,
)

__all__ = ["DetectionEvalReport", "format_stats", "run_detection_evaluation"]


def format_stats(stats: dict[str, dict[str, float]]) -> str:
    """COCOeval's summaries, one line per IoU type: ``bbox  AP 38.0  AP50 59.6 ...``."""
    lines = []
    for iou_type, values in stats.items():
        cells = "  ".join(f"{name} {value:.1f}" for name, value in values.items())
        lines.append(f"{iou_type:<9s} {cells}")
    return "\n".join(lines)


@dataclass
class DetectionEvalReport:
    """An evaluation of :func:`run_detection_evaluation`: COCOeval's ``evaluation``, the
    ``label_space`` the labels were read in, ``notes`` on the model (overridden settings that
    changed it, where its weights came from), the data's unusable annotations, and the folder
    the files went to (``None`` on ranks other than the first, which write nothing)."""

    evaluation: DetectionEvaluation
    label_space: LabelSpace
    annotations: str
    dropped_annotations: int
    notes: list[str] = field(default_factory=list)
    output_dir: Path | None = None

    def summary(self) -> str:
        """The AP table, the detections left out, the images and where the files are."""
        result = self.evaluation
        lines = [format_stats(result.stats)]
        if self.label_space.kind == "category_ids":
            counts = ", ".join(f"label {label}: {n}" for label, n in result.dropped.items())
            lines.append(
                f"{sum(result.dropped.values())} detections of labels without a category in "
                f"{self.annotations} left out of the evaluation" + (f" ({counts})" if counts else "")
            )
        lines.append(
            f"{result.images} images, {len(result.bad)} unreadable"
            + "".join(f"\n  BAD {b.path}: {b.reason}" for b in result.bad)
        )
        out = self.output_dir
        if out is not None:
            report = out / "data_report.json"
            lines.append(f"{self.dropped_annotations} unusable annotations dropped (see {report})")
            lines.append(f"wrote {out / 'detections.json'} (COCO results) and {out / 'stats.json'}")
        return "\n".join(lines)


_Prepared = tuple[DetectionTaskConfig, nn.Module, CocoDetection, LabelSpace, list[str]]


def _val_data(det: DetectionConfig) -> CocoDetection:
    if not det.val_images or not det.val_annotations:
        raise ConfigError("detection.val_images and detection.val_annotations name the images to evaluate")
    # as in training: a mask model's instances need a mask
    masks = model_info(det.model, "detector").has_masks
    return CocoDetection(det.val_images, det.val_annotations, train=False, masks=masks)


def _from_checkpoint(checkpoint: str | os.PathLike, overrides: Sequence[str]) -> _Prepared:
    """A training checkpoint's config and model (the overrides apply to both: its transform, its
    heads), the validation data and its label space (the checkpoint's), and notes."""
    trained = load_trained_detector(checkpoint, overrides=overrides)
    cfg = trained.config
    if not isinstance(cfg, DetectionTaskConfig) or trained.label_space is None:
        raise ConfigError(f"{checkpoint}: not a detection training checkpoint")
    notes = [f"override changes the model: {change}" for change in trained.changes]
    dataset = _val_data(cfg.detection)
    trained.check_categories(dataset.category_ids, f"{cfg.detection.val_annotations} ({checkpoint})")
    return cfg, trained.model, dataset, trained.label_space, notes


def _from_config(cfg: DetectionTaskConfig) -> _Prepared:
    """The detector ``cfg`` builds with its ``detection.weights``, the validation data and the
    label space of both, and where the weights came from."""
    check_config(cfg, "run_detection_evaluation(cfg)", DetectionTaskConfig)
    det = cfg.detection
    if not det.weights:
        raise ConfigError("evaluating a config needs detection.weights=FILE (or give a training checkpoint)")
    dataset = _val_data(det)
    data = str(det.val_annotations)
    space = detector_label_space(det, dataset.category_ids, data=data, evaluating=True)
    keypoints = len(dataset.keypoint_names) or None
    model, report = build_detector_from_config(det, space.num_classes, keypoints)
    return cfg, model, dataset, space, [report]


def run_detection_evaluation(
    cfg: DetectionTaskConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> DetectionEvalReport:
    """COCOeval (pycocotools) of a detector on ``detection.val_images``/``val_annotations``:
    the model of a training ``checkpoint`` (``overrides``, ``section.key=value``, apply to its
    config and to the rebuilt model, see :func:`load_trained_detector`), or the one ``cfg``
    builds with its ``detection.weights``. Writes ``detections.json`` (COCO results),
    ``stats.json`` and ``data_report.json`` to ``output_dir`` (default ``<output_dir>/eval``);
    under torchrun every rank evaluates its share and the first writes."""
    if checkpoint is not None and cfg is None:
        cfg, model, dataset, space, notes = _from_checkpoint(checkpoint, overrides)
    elif cfg is not None and checkpoint is None and not overrides:
        cfg, model, dataset, space, notes = _from_config(cfg)
    else:
        raise ConfigError(
            "give a detection training checkpoint (with overrides of its config, if any) or a detection "
            "config, one of them"
        )
    dataset.set_labels(space.kind)
    notes.append(space.summary())
    det = cfg.detection
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
        progress=progress and ctx.is_main,
    )
    ctx.shutdown()
    report = DetectionEvalReport(
        result, space, str(det.val_annotations), len(dataset.dropped_annotations), notes
    )
    if ctx.is_main:
        out = Path(output_dir or Path(cfg.output_dir) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        write_coco_results(out / "detections.json", result.results)
        (out / "stats.json").write_text(json.dumps({"images": result.images, **result.stats}, indent=2))
        (out / "data_report.json").write_text(json.dumps(dataset.data_report(), indent=2) + "\n")
        report.output_dir = out
    return report
