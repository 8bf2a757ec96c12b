"""Detection, instance segmentation and keypoints (the paper's COCO half) as a
:class:`~nonlocalnet.engine.task.Task`: a torchvision Mask R-CNN / Keypoint R-CNN with the paper's
non-local blocks (:func:`nonlocalnet.detection.build_detector`), COCO-format data, the summed
torchvision losses, and pycocotools' COCOeval.

Reached through ``cfg.task`` (``detection``); the settings are the config's ``detection``
section (:class:`~nonlocalnet.engine.config.DetectionConfig`) plus the shared ``optim``,
``train``, ``checkpoint``, ``eval`` sections and ``data.num_workers``/``data.bad_data_threshold``.
Needs the ``detection`` extra (torchvision, pycocotools).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nonlocalnet.detection.batch import DetectionBatch
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.evaluate import DetectionEvaluation, evaluate_detector
from nonlocalnet.detection.sampler import build_detection_loader
from nonlocalnet.detection.trained import build_detector_from_config, detector_label_space
from nonlocalnet.engine.config import Config, ConfigError, DetectionConfig
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.task import Evaluation, StepLoss
from nonlocalnet.models.registry import ModelInfo, list_models, model_info

__all__ = ["Detection", "evaluation_record"]

_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
_IOU_NAMES = {"bbox": "box", "segm": "mask", "keypoints": "kp"}


def _dataset(det: DetectionConfig, split: str, *, train: bool, seed: int, info: ModelInfo) -> CocoDetection:
    """The ``split`` data as the detector ``info`` uses it: masks only for a mask head (whose
    instances without a mask are dropped), keypoints only for a keypoint head (and training's
    ``detection.min_keypoints_per_image``)."""
    images, annotations = getattr(det, f"{split}_images"), getattr(det, f"{split}_annotations")
    for key, path in ((f"{split}_images", images), (f"{split}_annotations", annotations)):
        if not Path(path).exists():
            raise ConfigError(f"detection.{key}: no such file or folder: {path}")
    keypoints = info.has_keypoints
    dataset = CocoDetection(
        images,
        annotations,
        train=train,
        flip=det.flip and train,
        seed=seed,
        masks=None if info.has_masks else False,
        keypoints=None if keypoints else False,
        keypoint_flip_map=det.keypoint_flip_map,
        min_keypoints_per_image=det.min_keypoints_per_image if train and keypoints else 0,
    )
    if info.has_masks and not dataset.masks:
        boxes_only = [n for n in list_models("detector") if n.startswith("fasterrcnn")]
        same = info.name.replace("maskrcnn", "fasterrcnn", 1)
        suggestion = f"{same!r}" if same in boxes_only else " or ".join(map(repr, boxes_only))
        raise ConfigError(
            f"detection.model {info.name!r} trains masks but detection.{split}_annotations {annotations} has "
            "no segmentation (box-only data: every segmentation missing or []); train a Faster R-CNN "
            f"model on it, e.g. detection.model={suggestion} (nonlocalnet models lists them)"
        )
    if train and not len(dataset):
        reasons = "; ".join(f"{n} {r}" for r, n in dataset.data_report()["skipped_images"].items())
        raise ConfigError(
            f"detection.train_annotations: no image of {annotations} is left to train on ({reasons}); "
            "detection.min_keypoints_per_image (torchvision's reference: 10) sets the keypoint rule"
        )
    return dataset


def evaluation_record(evaluation: DetectionEvaluation) -> dict[str, Any]:
    """The flat log record of an evaluation: ``box_AP``, ``box_AP50``, ..., ``mask_AP``, ...,
    ``kp_AP`` (percent, COCOeval's summaries), the images, the unreadable ones and the
    detections dropped for labels without a category (category-id labels)."""
    record: dict[str, Any] = {}
    for iou_type, stats in evaluation.stats.items():
        record |= {f"{_IOU_NAMES[iou_type]}_{name}": value for name, value in stats.items()}
    record["images"] = evaluation.images
    record["bad_images"] = sorted({b.path for b in evaluation.bad})
    record["dropped_detections"] = sum(evaluation.dropped.values())
    return record


def _check_oks_sigmas(det: DetectionConfig, k: int) -> None:
    """COCOeval's keypoint AP needs one OKS sigma per keypoint: say so when the run starts,
    not at its first evaluation."""
    if det.oks_sigmas is None and k != 17:
        raise ConfigError(
            f"detection.oks_sigmas: {det.train_annotations} defines {k} keypoints, not COCO's 17 person "
            f"keypoints, so give one OKS sigma per keypoint ({k} values)"
        )
    if det.oks_sigmas is not None and len(det.oks_sigmas) != k:
        raise ConfigError(
            f"detection.oks_sigmas has {len(det.oks_sigmas)} values but {det.train_annotations} defines "
            f"{k} keypoints"
        )


class Detection:
    """The detection task of ``cfg`` (``task: detection``): reads the COCO annotation files
    when built and checks the detector against them (class count, keypoints)."""

    sample_noun = "image"

    def __init__(self, cfg: Config, **_: Any) -> None:
        det = cfg.detection
        self.cfg = cfg
        if not det.train_images:
            raise ConfigError("task detection needs detection.train_images and detection.train_annotations")
        if cfg.train.memory_format != "contiguous":
            raise ConfigError(
                f"train.memory_format: {cfg.train.memory_format!r} is for video models; detectors "
                "take images of varied sizes and train in the contiguous layout"
            )
        if cfg.train.precise_bn_batches:
            raise ConfigError(
                "train.precise_bn_batches: the detectors' backbone BN is frozen (FrozenBatchNorm2d) and the "
                "non-local blocks' norm does not keep running statistics worth re-estimating; set it to 0"
            )
        self.info = model_info(det.model, "detector")
        self.label = det.model
        self._train_set = _dataset(det, "train", train=True, seed=cfg.seed, info=self.info)
        self.val_set = (
            _dataset(det, "val", train=False, seed=cfg.seed, info=self.info) if det.val_images else None
        )
        self.has_validation = self.val_set is not None
        self.validation_files = (det.val_annotations, det.val_images) if self.has_validation else ()
        self.class_names = list(self._train_set.class_names)
        if self.val_set is not None and list(self.val_set.category_ids) != list(self._train_set.category_ids):
            raise ConfigError(
                f"detection: the validation categories {self.val_set.category_ids} are not the training "
                f"categories {self._train_set.category_ids}"
            )
        # what a label means (detection.labels): contiguous 1..K, or the category ids themselves
        self.label_space = detector_label_space(
            det, self._train_set.category_ids, data=str(det.train_annotations)
        )
        for dataset in (self._train_set, self.val_set):
            if dataset is not None:
                dataset.set_labels(self.label_space.kind)
        self.num_classes = self.label_space.num_classes
        self.keypoint_names = list(self._train_set.keypoint_names)
        if self.info.has_keypoints and not self.keypoint_names:
            raise ConfigError(
                f"detection.model {det.model!r} predicts keypoints but "
                f"{det.train_annotations} defines none (categories[].keypoints)"
            )
        if self.info.has_keypoints:
            _check_oks_sigmas(det, len(self.keypoint_names))
        self.train_metrics = (
            _LOSSES
            + (("loss_mask",) if self.info.has_masks else ())
            + (("loss_keypoint",) if self.info.has_keypoints else ())
        )

    @property
    def train_set(self) -> CocoDetection:
        return self._train_set

    def build_model(self) -> tuple[nn.Module, str]:
        keypoints = len(self.keypoint_names) if self.info.has_keypoints else None
        model, report = build_detector_from_config(self.cfg.detection, self.num_classes, keypoints)
        return model, f"{report}; {self.label_space.summary()}"

    def train_loader(
        self, *, distributed: tuple[int, int] | None, num_workers: int, epoch: int = 0, start_batch: int = 0
    ) -> DataLoader:
        return build_detection_loader(
            self._train_set,
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            num_workers=num_workers,
            distributed=distributed,
            train=True,
            aspect_ratio_grouping=self.cfg.detection.aspect_ratio_grouping,
            start_batch=start_batch,
            epoch=epoch,
        )

    def model_input(
        self, batch: DetectionBatch, device: torch.device, memory_format: torch.memory_format
    ) -> list[Tensor]:
        return [image.to(device, non_blocking=True) for image in batch.images]

    def example_input(self, device: torch.device, memory_format: torch.memory_format) -> list[Tensor]:
        size = self.cfg.detection.min_size[-1]
        return [torch.zeros(3, size, size, device=device)]

    def _targets(self, batch: DetectionBatch, device: torch.device) -> list[dict[str, Tensor]]:
        return [
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in batch.targets
        ]

    def loss(
        self, net: nn.Module, batch: DetectionBatch, device: torch.device, memory_format: torch.memory_format
    ) -> StepLoss:
        """torchvision's losses (means over the batch's images) summed, times the images used,
        so that the engine's division by the nominal batch gives torchvision's loss for a full
        batch and keeps the scale when some images were broken."""
        losses = net(self.model_input(batch, device, memory_format), self._targets(batch, device))
        n = len(batch)
        total = sum(value.float() for value in losses.values()) * n
        return StepLoss(total, {key: float(value.detach()) * n for key, value in losses.items()})

    def placeholder_loss(
        self, net: nn.Module, device: torch.device, memory_format: torch.memory_format
    ) -> Tensor:
        """The summed losses of one blank image without objects (its gradient is then zeroed),
        plus every trainable parameter times zero: without objects some branches see no RoI (a
        non-local block in the keypoint head then returns its empty input unchanged), and DDP
        (without ``find_unused_parameters``) waits for a gradient of every parameter."""
        image = self.example_input(device, memory_format)[0]
        h, w = image.shape[-2:]
        target: dict[str, Tensor] = {
            "boxes": torch.zeros(0, 4, device=device),
            "labels": torch.zeros(0, dtype=torch.int64, device=device),
        }
        if self.info.has_masks:
            target["masks"] = torch.zeros(0, h, w, dtype=torch.uint8, device=device)
        if self.info.has_keypoints:
            target["keypoints"] = torch.zeros(0, len(self.keypoint_names), 3, device=device)
        losses = net([image], [target])
        unused = sum(p.sum() * 0.0 for p in net.parameters() if p.requires_grad)
        return sum(value.float() for value in losses.values()) + unused

    def evaluate(
        self, model: nn.Module, ctx: DistContext, *, memory_format: torch.memory_format
    ) -> Evaluation:
        """COCOeval on the validation images (box AP chooses ``best.pt``)."""
        assert self.val_set is not None
        result = evaluate_detector(
            model,
            self.val_set,
            device=ctx.device,
            batch_size=self.cfg.eval.batch_size,
            ctx=ctx,
            oks_sigmas=self.cfg.detection.oks_sigmas,
            mask_threshold=self.cfg.detection.mask_threshold,
        )
        record = evaluation_record(result)
        return Evaluation(record, float(result.stats["bbox"]["AP"]), sorted({b.path for b in result.bad}))

    def checkpoint_extras(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "category_ids": list(self._train_set.category_ids),
            "keypoint_names": list(self.keypoint_names),
            "labels": self.label_space.kind,  # eval and predict map labels as training did
            "num_classes": self.num_classes,
        }

    def write_run_files(self, folder: Path) -> None:
        (folder / "classes.txt").write_text("\n".join(self.class_names) + "\n")
        # the annotations left out as unusable and the images training skips (CocoDetection.data_report)
        report = {"train": self._train_set.data_report()}
        if self.val_set is not None:
            report["val"] = self.val_set.data_report()
        (folder / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
