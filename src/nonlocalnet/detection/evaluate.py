"""COCO evaluation of torchvision detectors with pycocotools' COCOeval: box AP, mask AP and
keypoint AP in percent (the paper's units).

:func:`evaluate_detector` runs the model over each rank's share of the images, gathers the
detections on every rank and evaluates them there: every rank returns the same numbers, and no
collective waits for a minutes-long COCOeval. Images that could not be read are left out of the
evaluation (not counted as missed) and reported in :attr:`DetectionEvaluation.bad`. With labels
that are category ids (``dataset.labels == "category_ids"``, :mod:`nonlocalnet.detection.labels`)
the detections of labels that are no category of the data are dropped before COCOeval and
counted in :attr:`DetectionEvaluation.dropped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from nonlocalnet.data.bad_data import BadSample
from nonlocalnet.detection.batch import DetectionBatch
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.cocoeval import _keypoint_setup, coco_evaluate, to_coco_results
from nonlocalnet.detection.sampler import build_detection_loader
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.errors import InvalidValueError

__all__ = ["DetectionEvaluation", "detector_iou_types", "evaluate_detector"]

_Found = dict[int, tuple[int, list[dict[str, Any]], Counter[int]]]
"""Dataset index -> (image id, its COCO results, its dropped detections per label)."""


def detector_iou_types(model: nn.Module) -> tuple[str, ...]:
    """``bbox``, plus ``segm`` when the model (or the one a DDP wrapper holds) has a mask head and
    ``keypoints`` when it has a keypoint head (torchvision's ``roi_heads.has_mask()`` /
    ``has_keypoint()``)."""
    net = getattr(model, "module", model)
    heads = getattr(net, "roi_heads", None)
    types = ["bbox"]
    if heads is not None and getattr(heads, "has_mask", lambda: False)():
        types.append("segm")
    if heads is not None and getattr(heads, "has_keypoint", lambda: False)():
        types.append("keypoints")
    return tuple(types)


@dataclass
class DetectionEvaluation:
    """``stats`` as :func:`coco_evaluate` returns it, the COCO ``results``, the unreadable images
    (``bad``), the number of ``images`` evaluated, COCOeval's ``summary_lines`` and ``dropped``:
    per label without a category (category-id labels only), how many detections were left out."""

    stats: dict[str, dict[str, float]]
    results: list[dict[str, Any]]
    bad: list[BadSample]
    images: int
    summary_lines: list[str] = field(default_factory=list)
    dropped: dict[int, int] = field(default_factory=dict)


def _drop_labels_without_category(
    out: dict[str, Tensor], known: dict[int, int]
) -> tuple[dict[str, Tensor], Counter[int]]:
    """``out`` without its detections whose label is not in ``known``, and how many per label."""
    labels = out["labels"].tolist()
    keep = [label in known for label in labels]
    if all(keep):
        return out, Counter()
    mask = torch.tensor(keep, dtype=torch.bool, device=out["labels"].device)
    n = len(labels)
    kept = {k: v[mask] if isinstance(v, Tensor) and v.dim() and len(v) == n else v for k, v in out.items()}
    return kept, Counter(label for label, k in zip(labels, keep, strict=True) if not k)


def evaluate_detector(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    device: torch.device | str,
    batch_size: int = 2,
    num_workers: int = 0,
    ctx: DistContext | None = None,
    iou_types: Sequence[str] | None = None,
    oks_sigmas: Sequence[float] | None = None,
    mask_threshold: float = 0.5,
    progress: bool = False,
) -> DetectionEvaluation:
    """COCOeval of ``model`` (eval mode, no gradients; its train/eval state is restored) on every
    image of ``dataset``, sharded over the ranks of ``ctx``; every rank returns the same result.

    ``iou_types`` default: :func:`detector_iou_types`. The ranks' padded repeats are dropped by
    dataset index; unreadable images are left out of COCOeval's image list and listed in ``bad``.
    With ``dataset.labels == "category_ids"``, detections of labels that are no category of the
    data are left out and counted in ``dropped``; in the contiguous space such a label is an error.
    """
    ctx = ctx if ctx is not None else DistContext()
    iou_types = tuple(iou_types) if iou_types is not None else detector_iou_types(model)
    if "keypoints" in iou_types:  # wrong or missing OKS sigmas: say so before the inference
        _keypoint_setup(dataset.coco, oks_sigmas)
    loader = build_detection_loader(
        dataset, batch_size=batch_size, shuffle=False, seed=0, num_workers=num_workers,
        distributed=(ctx.rank, ctx.world_size) if ctx.distributed else None, train=False,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mine, bad = _detect_shard(
                model, tqdm(loader, desc="eval", unit="batch", disable=not (progress and ctx.is_main)),
                dataset, device=device, mask_threshold=mask_threshold,
            )  # fmt: skip
    finally:
        model.train(was_training)
    done: _Found = {}
    all_bad: dict[int, BadSample] = {}
    for part, part_bad in ctx.gather_objects((mine, bad)):
        for index, value in part.items():
            done.setdefault(index, value)
        for b in part_bad:
            all_bad.setdefault(b.index, b)
    order = sorted(done)
    results = [r for index in order for r in done[index][1]]
    image_ids = [done[index][0] for index in order]
    stats = coco_evaluate(dataset.coco, results, iou_types, oks_sigmas=oks_sigmas, image_ids=image_ids)
    bad_list = [all_bad[i] for i in sorted(all_bad)]
    dropped = sum((done[index][2] for index in order), Counter())
    lines = list(stats.summary_lines)
    return DetectionEvaluation(
        dict(stats), results, bad_list, len(image_ids), lines, dict(sorted(dropped.items()))
    )


def _detect_shard(
    model: nn.Module,
    batches: Iterable[DetectionBatch],
    dataset: CocoDetection,
    *,
    device: torch.device | str,
    mask_threshold: float,
) -> tuple[_Found, list[BadSample]]:
    """Run ``model`` over this rank's ``batches`` (once per dataset index: padded repeats are
    skipped): its COCO results per dataset index and the unreadable images."""
    mine: _Found = {}
    bad: dict[int, BadSample] = {}
    labels = dataset.label_to_category
    drop = dataset.labels == "category_ids"
    for batch in batches:
        for b in batch.bad:
            bad.setdefault(b.index, b)
        todo = [n for n, index in enumerate(batch.indices) if index not in mine]
        if not todo:
            continue
        outputs = model([batch.images[n].to(device) for n in todo])
        if len(outputs) != len(todo):
            raise InvalidValueError(f"the model returned {len(outputs)} outputs for {len(todo)} images")
        for n, out in zip(todo, outputs, strict=True):
            image_id = batch.image_ids[n]
            out, dropped = _drop_labels_without_category(out, labels) if drop else (out, Counter())
            found = to_coco_results([out], [image_id], labels, mask_threshold=mask_threshold)
            mine[batch.indices[n]] = (image_id, found, dropped)
    return mine, list(bad.values())
