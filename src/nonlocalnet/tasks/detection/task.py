"""Detection, instance segmentation and keypoints (the paper's COCO half) as a
:class:`~nonlocalnet.engine.task.Task`: a torchvision Mask R-CNN / Keypoint R-CNN with the paper's
non-local blocks (:func:`nonlocalnet.detection.build_detector`), COCO-format data, the summed
torchvision losses, and pycocotools' COCOeval.

Reached through ``cfg.task`` (``detection``); the settings are the config's ``detection``
section (:class:`~nonlocalnet.tasks.detection.DetectionConfig`) plus the shared ``optim``,
``train``, ``checkpoint``, ``eval`` sections and ``data.num_workers``/``data.bad_data_threshold``.
Needs the ``detection`` extra (torchvision, pycocotools) when built: this module imports
``nonlocalnet.detection`` only then, so that the task registers without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nonlocalnet.engine.config import ConfigError, check_config
from nonlocalnet.engine.distributed import DistContext
from nonlocalnet.engine.task import Evaluation, StepLoss
from nonlocalnet.errors import InvalidTypeError
from nonlocalnet.models.model_file import read_model_file
from nonlocalnet.tasks.detection.config import DetectionTaskConfig

if TYPE_CHECKING:
    from nonlocalnet.detection.batch import DetectionBatch
    from nonlocalnet.detection.coco import CocoDetection

__all__ = ["Detection"]

_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def _check_settings(cfg: DetectionTaskConfig) -> None:
    """The engine's settings that do not apply to detectors."""
    if not cfg.detection.train_images:
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


class Detection:
    """The detection task of ``cfg`` (``task: detection``): reads the COCO annotation files
    when built and checks the detector against them (class count, keypoints)."""

    sample_noun = "image"
    # what a resume may change in the ``detection`` section: where weights and validation data
    # are, how the model is evaluated
    resume_free_settings = (
        "detection.weights",
        "detection.weights_backbone",
        "detection.val_images",
        "detection.val_annotations",
        "detection.oks_sigmas",
        "detection.mask_threshold",
    )

    def __init__(self, cfg: DetectionTaskConfig) -> None:
        import nonlocalnet.detection  # noqa: F401  (the detection extra: registers the detectors)
        from nonlocalnet.models.registry import model_info
        from nonlocalnet.tasks.detection.data import check_oks_sigmas

        check_config(cfg, "Detection(cfg)", DetectionTaskConfig)
        _check_settings(cfg)
        det = cfg.detection
        self.cfg = cfg
        self.info = model_info(det.model, "detector")
        self.label = det.model
        self._read_data()
        self.num_classes = self.label_space.num_classes
        self.keypoint_names = list(self._train_set.keypoint_names)
        if self.info.has_keypoints and not self.keypoint_names:
            raise ConfigError(
                f"detection.model {det.model!r} predicts keypoints but "
                f"{det.train_annotations} defines none (categories[].keypoints)"
            )
        if self.info.has_keypoints:
            check_oks_sigmas(det, len(self.keypoint_names))
        self.train_metrics = (
            _LOSSES
            + (("loss_mask",) if self.info.has_masks else ())
            + (("loss_keypoint",) if self.info.has_keypoints else ())
        )

    def _read_data(self) -> None:
        """The training and validation sets, their classes and their label space."""
        from nonlocalnet.tasks.detection.data import detection_dataset
        from nonlocalnet.tasks.detection.setup import detector_label_space

        cfg, det = self.cfg, self.cfg.detection
        self._train_set = detection_dataset(det, "train", train=True, seed=cfg.seed, info=self.info)
        self.val_set = None
        if det.val_images:
            self.val_set = detection_dataset(det, "val", train=False, seed=cfg.seed, info=self.info)
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

    @property
    def train_set(self) -> CocoDetection:
        return self._train_set

    def build_model(self) -> tuple[nn.Module, str]:
        keypoints = len(self.keypoint_names) if self.info.has_keypoints else None
        from nonlocalnet.tasks.detection.setup import build_detector_from_config

        model, report = build_detector_from_config(self.cfg.detection, self.num_classes, keypoints)
        return model, f"{report}; {self.label_space.summary()}"

    def train_loader(
        self, *, distributed: tuple[int, int] | None, num_workers: int, epoch: int = 0, start_batch: int = 0
    ) -> DataLoader:
        from nonlocalnet.detection.sampler import build_detection_loader

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
        from nonlocalnet.detection.evaluate import evaluate_detector
        from nonlocalnet.tasks.detection.data import evaluation_record

        if self.val_set is None:
            raise ConfigError("detection: no validation data (detection.val_images, val_annotations)")
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

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Tell the loader's batch sampler (it keeps the order: aspect-ratio groups) the epoch."""
        from nonlocalnet.detection.sampler import GroupedBatchSampler

        if not isinstance(loader.batch_sampler, GroupedBatchSampler):
            raise InvalidTypeError(
                "expected a loader of train_loader() (a GroupedBatchSampler), got "
                f"{type(loader.batch_sampler).__name__}"
            )
        loader.batch_sampler.set_epoch(epoch)

    def memory_format(self, model: nn.Module, device: torch.device) -> torch.memory_format:
        """Contiguous: detectors take images of varied sizes (``train.memory_format`` is checked
        when the task is built)."""
        return torch.contiguous_format

    def load_weights(self, model: nn.Module, path: str | os.PathLike) -> str:
        """A training checkpoint's model (strictly) or a detector state dict file
        (:func:`~nonlocalnet.detection.load_detector_weights`) into ``model``."""
        from nonlocalnet.detection.models import load_detector_weights
        from nonlocalnet.tasks.detection.setup import misfit

        weights = read_model_file(path)
        if weights.kind != "checkpoint":
            return f"detector weights from {path}: {load_detector_weights(model, path).summary()}"
        problem = misfit(model, weights.state)
        if problem:
            raise ConfigError(f"{path}: its weights do not fit the model the config builds ({problem})")
        model.load_state_dict(weights.state)
        return f"model weights of training checkpoint {path}"

    def predict(
        self, model: nn.Module, inputs: Sequence[str | os.PathLike], *, device: torch.device
    ) -> list[dict[str, Any]]:
        """The detections of each image file (score >= 0.5), as
        :func:`~nonlocalnet.detection.predict.detections_to_json` gives them:
        ``{"image", "detections": [{"label", "category_id", "score", "box_xyxy", ...}]}``."""
        from nonlocalnet.detection.predict import detections_to_json
        from nonlocalnet.detection.trained import predict_image

        space = self.label_space
        by_id = dict(zip(self._train_set.category_ids, self.class_names, strict=True))
        names = {label: by_id[c] for label, c in space.label_to_category.items()}
        model.to(device)
        out = []
        for path in inputs:
            found = predict_image(model, path, device=device)
            rows = detections_to_json(
                found,
                label_names=names,
                label_to_category=space.label_to_category,
                mask_threshold=self.cfg.detection.mask_threshold,
            )
            out.append({"image": str(path), "detections": rows})
        return out

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
